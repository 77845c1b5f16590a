/**
 * The steps of a role's start, and how to undo those done so far when a
 * later one fails. A database pool, a LISTEN connection, a watch stream or
 * a bound listener left open would keep the process running after the
 * error, serving nothing: `warden control-plane` on a taken port used to
 * print the error and then never exit.
 */
export class StartSteps {
  private readonly undo: (() => unknown)[] = [];

  /** Registers how to close what was just opened; on failure, the last opened closes first. */
  opened(close: () => unknown): void {
    this.undo.push(close);
  }

  /** Runs one step; if it throws or rejects, closes everything opened so far and rethrows its error. */
  async run<T>(step: () => T | Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      const undo = this.undo.splice(0).reverse();
      // One at a time, and a close that fails does not hide the start's error.
      for (const close of undo) await Promise.resolve().then(close).catch(() => undefined);
      throw err;
    }
  }
}
