/**
 * lru-cache options for at most `n` entries, counted as a size of 1 each
 * rather than with `max`: lru-cache preallocates arrays of `max` slots
 * (~3.6 MB for 100,000, more with a ttl) before anything is stored, and
 * the sidecar's caches are usually far from full; sized this way their
 * arrays grow with their contents instead.
 */
export function countBound(n: number): { maxSize: number; sizeCalculation: () => number } {
  return { maxSize: n, sizeCalculation: () => 1 };
}
