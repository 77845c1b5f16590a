#!/usr/bin/env node
// Launcher for `npx warden …` from the repository: registers tsx so the
// TypeScript sources run as they are, with no build step.
import { register } from "tsx/esm/api";

register();
// A dynamic import, because static imports would be evaluated before
// register() has installed the loader.
await import("../src/cli/main.ts");
