/**
 * Types for Kiln-specific options. A Kiln app is an ordinary Convex app; these describe what
 * Kiln adds around it.
 */

/** Per-deployment limits a Kiln host enforces (see the host's deployment configuration). */
export interface KilnLimits {
  /** Fuel per query or mutation call (about 1e10 per second of guest work). */
  fuelPerCall?: number;
  /** Wall-clock deadline per call, in milliseconds. */
  deadlineMs?: number;
  /** Linear memory cap, in bytes. */
  memoryBytes?: number;
}

/** What `kiln build` writes next to the component (`.kiln/manifest.json`). */
export interface KilnManifest {
  functions: Array<{
    path: string;
    kind: "query" | "mutation" | "action" | "httpAction";
    visibility: "public" | "internal";
    args: unknown | null;
    returns: unknown | null;
  }>;
  schema: unknown | null;
  crons: unknown | null;
  httpRoutes: Array<{ path: string; method: string }>;
}
