// Shared helpers of the end-to-end tests: a real `kiln serve` in a child process, deploys
// through the real CLI, JWTs signed with node's crypto, and small waiting utilities.
import { spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, createSign, createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../../../..");
export const testApp = resolve(here, "../app");
export const chatApp = join(repoRoot, "examples/chat");
/** The `kiln` binary: KILN_BIN (read when used), or the debug build. */
export const kilnBin = () => process.env.KILN_BIN ?? join(repoRoot, "target/debug/kiln");

/**
 * Starts `kiln serve` on a free port with a fresh data directory (or `data`, which `stop`
 * then keeps), with `args` added to its command line.
 */
export async function startServer({ staticDir, env = {}, data: reuse, args: extra = [] } = {}) {
  const data = reuse ?? mkdtempSync(join(tmpdir(), "kiln-e2e-"));
  const args = ["serve", "--data", data, "--listen", "127.0.0.1:0", ...extra];
  if (staticDir) args.push("--static", staticDir);
  const child = spawn(kilnBin(), args, {
    env: { ...process.env, KILN_LOG: process.env.KILN_LOG ?? "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln serve did not start:\n${output}`)), 60_000);
    const onData = (chunk) => {
      output += chunk;
      const m = /serving on (http:\/\/[0-9.:]+)/.exec(output);
      // The site origin's line comes last (when there is one).
      if (m && (/HTTP actions \(site\): /.test(output) || env.KILN_SITE_LISTEN === "off")) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (c) => (output += c));
    child.on("exit", (code) => reject(new Error(`kiln serve exited with ${code}:\n${output}`)));
  });
  const adminKey = readFileSync(join(data, "admin_key"), "utf8").trim();
  const site = /HTTP actions \(site\): (http:\/\/[0-9.:]+)/.exec(output);
  return {
    url,
    /** The site origin (HTTP actions at the root), if served. */
    siteUrl: site?.[1],
    adminKey,
    data,
    pid: child.pid,
    output: () => output,
    /** Kills the server with SIGKILL (its data directory stays). */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.on("exit", r));
        child.kill("SIGKILL");
        await exited;
      }
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.on("exit", r));
        child.kill("SIGINT");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      if (!reuse) rmSync(data, { recursive: true, force: true });
    },
  };
}

/** Runs the kiln CLI; returns {status, stdout, stderr}. */
export function kiln(...args) {
  const r = spawnSync(kilnBin(), args, { encoding: "utf8", timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Builds and deploys `app` to a deployment URL; throws with the CLI's output on failure. */
export function deploy(deploymentUrl, adminKey, app) {
  const r = kiln("deploy", app, "--url", deploymentUrl, "--admin-key", adminKey);
  if (r.status !== 0) throw new Error(`kiln deploy failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Creates a deployment through the admin API; returns its admin key. */
export async function createDeployment(server, name) {
  const res = await fetch(`${server.url}/api/kiln/deployments`, {
    method: "POST",
    headers: { Authorization: `Convex ${server.adminKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!res.ok) throw new Error(`creating ${name}: ${res.status} ${await res.text()}`);
  return (await res.json()).adminKey;
}

/** POSTs JSON to an admin endpoint. */
export async function admin(deploymentUrl, key, path, body) {
  const res = await fetch(`${deploymentUrl}${path}`, {
    method: "POST",
    headers: { Authorization: `Convex ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/** Resolves when `predicate()` is truthy (polled), or rejects after `ms`. */
export async function waitFor(predicate, ms = 10_000, what = "condition", every = 20) {
  const started = Date.now();
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() - started > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** The next value `onUpdate` delivers that satisfies `predicate`. */
export function nextUpdate(client, fn, args, predicate, ms = 10_000) {
  return new Promise((resolveValue, reject) => {
    let unsubscribe = () => {};
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`no matching update of ${fn} within ${ms} ms`));
    }, ms);
    unsubscribe = client.onUpdate(fn, args, (value) => {
      if (predicate(value)) {
        clearTimeout(timer);
        queueMicrotask(() => unsubscribe());
        resolveValue(value);
      }
    });
  });
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An RSA key pair for signing test tokens. */
export function rsaKeys() {
  return generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
}

/** A JWT: RS256 with `privateKey`, or HS256 with `secret`; `alg` may be forced. */
export function jwt(claims, { privateKey, secret, alg, kid } = {}) {
  const algorithm = alg ?? (secret ? "HS256" : "RS256");
  const header = { alg: algorithm, typ: "JWT", ...(kid ? { kid } : {}) };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  let signature = "";
  if (algorithm === "HS256") signature = createHmac("sha256", secret).update(input).digest("base64url");
  else if (algorithm === "RS256") signature = createSign("RSA-SHA256").update(input).sign(privateKey, "base64url");
  return `${input}.${signature}`;
}

/** Seconds since the epoch. */
export const now = () => Math.floor(Date.now() / 1000);
