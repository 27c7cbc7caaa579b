// Running the official `convex` CLI (the pinned 1.48 package) against a `kiln serve`, always
// with CI=1: outside CI it reports errors and traces to a hosted error tracker.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const modules = join(dirname(fileURLToPath(import.meta.url)), "../node_modules");

/** A project folder the CLI accepts (it wants `convex` among the dependencies), with a copy of
 * `app`'s `convex/` folder if given. */
export function project(app) {
  const dir = mkdtempSync(join(tmpdir(), "kiln-cli-"));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ private: true, dependencies: { convex: "1.48.0" } }));
  symlinkSync(modules, join(dir, "node_modules"));
  if (app) {
    // The app's functions without what `kiln build` generated: the CLI generates its own.
    cpSync(join(app, "convex"), join(dir, "convex"), {
      recursive: true,
      filter: (src) => !src.includes("_generated"),
    });
  }
  return dir;
}

/** The CLI's environment for a deployment. */
export function cliEnv(url, adminKey) {
  const env = { ...process.env, CI: "1", CONVEX_SELF_HOSTED_URL: url, CONVEX_SELF_HOSTED_ADMIN_KEY: adminKey };
  // Anything pointing the CLI at a hosted deployment instead.
  for (const name of ["CONVEX_DEPLOYMENT", "CONVEX_DEPLOY_KEY", "CONVEX_URL"]) delete env[name];
  return env;
}

const cli = join(modules, "convex/bin/main.js");

/** Runs `npx convex …` against a deployment; returns {status, stdout, stderr}. */
export function convex(dir, url, adminKey, ...args) {
  const r = spawnSync(process.execPath, [cli, ...args], {
    cwd: dir,
    encoding: "utf8",
    timeout: 120_000,
    env: cliEnv(url, adminKey),
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The `CONVEX_SELF_HOSTED_URL`/`_ADMIN_KEY` lines `kiln` printed, as [url, key]. */
export function selfHosted(output) {
  const url = /CONVEX_SELF_HOSTED_URL=(\S+)/.exec(output);
  const key = /CONVEX_SELF_HOSTED_ADMIN_KEY=(\S+)/.exec(output);
  assert.ok(url && key, `no lines for the convex CLI in:\n${output}`);
  return [url[1], key[1]];
}

/** Starts a long-running `npx convex …` (`logs`, `run --watch`); `out()` is what it printed. */
export function watch(dir, url, adminKey, ...args) {
  const child = spawn(process.execPath, [cli, ...args], { cwd: dir, env: cliEnv(url, adminKey) });
  let out = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (out += c));
  return { out: () => out, kill: () => child.kill("SIGKILL") };
}

/** The output of a CLI run that must succeed. */
export function ok(r, what) {
  assert.equal(r.status, 0, `${what}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}
