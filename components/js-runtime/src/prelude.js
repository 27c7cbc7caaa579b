// Kiln's JavaScript prelude: the globals that the `convex` package's `convex/server` code and
// user code expect, built on the natives the Rust side installs as `__kiln_native`, and the
// dispatcher behind the component's `invoke` and `analyze` exports.
// It runs once, at build time (pre-initialization), before the app's bundle is evaluated.
(function () {
  "use strict";
  const native = globalThis.__kiln_native;
  delete globalThis.__kiln_native;
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

  // ---- host calls ------------------------------------------------------------------------
  // Captured now: user code may replace the global `Promise`.
  const NativePromise = Promise;
  const resolved = (v) => NativePromise.resolve(v);
  const rejected = (e) => NativePromise.reject(e);
  // The native returns "0" + result JSON, or "1" + error JSON ({code, message, data?}).
  function hostCall(op, argsJson) {
    const reply = native.syscall(op, argsJson);
    if (reply.charCodeAt(0) === 48) return reply.slice(1);
    const err = JSON.parse(reply.slice(1));
    const e = new Error(err.message);
    e.code = err.code;
    if (err.data !== undefined) e.data = err.data;
    throw e;
  }

  define(
    "Convex",
    Object.freeze({
      syscall: (op, argsJson) => hostCall(op, argsJson),
      // Host calls complete synchronously: an already settled promise (no executor closure).
      asyncSyscall: (op, argsJson) => {
        try {
          return resolved(hostCall(op, argsJson));
        } catch (e) {
          return rejected(e);
        }
      },
      // What the package's action storage writer asks for (`ctx.storage.store/get`).
      jsSyscall: (op, args) => {
        try {
          if (op === "storage/storeBlob") {
            const blob = args?.blob;
            const bytes = blob instanceof Blob ? blobBytes.get(blob) : undefined;
            if (bytes === undefined) {
              throw new TypeError("store() expects a Blob; for a Request, `await request.blob()` gives one");
            }
            const sha256 = args.options?.sha256;
            return resolved(native.storageStore(bytes, blob.type, sha256 === undefined ? undefined : String(sha256)));
          }
          if (op === "storage/getBlob") {
            const found = native.storageGet(String(args?.storageId));
            return resolved(found === null ? null : new Blob([found[0]], { type: found[1] ?? "" }));
          }
        } catch (e) {
          return rejected(e);
        }
        throw new Error(`The operation ${op} is not supported by this version of Kiln`);
      },
    }),
  );

  // Fast `db.get`, `db.insert` and `db.patch`, put on the package's memoized reader and
  // writer: one native call and one settled promise, where the package's methods take three
  // async frames and three awaits (each `await` costs QuickJS as much as a small syscall).
  // `dbGet` and `dbInsert` answer the settled promise themselves (a call of `resolved` less).
  // A native answers `undefined`, before any syscall, for what it leaves to the package's own
  // method; a failed syscall rejects as the package's `performAsyncSyscall` rethrows it (the
  // host's database errors carry no `data`, so none becomes a `ConvexError`).
  const fastDb = new WeakSet();
  // What every fast `patch` returns, and a fast `get` that finds nothing: one promise settled
  // with `undefined` and one with `null`, made while the app loads (so they are in the
  // snapshot, and no call sees another's). Making a settled promise costs QuickJS ~7.5k fuel;
  // a settled promise can be awaited any number of times.
  const DONE = resolved(undefined);
  const NONE = resolved(null);
  const dbFailure = (e) => rejected(e.data !== undefined ? e : new Error(e.message));
  const fast = (f) => {
    fastDb.add(f);
    return f;
  };
  const fastGet = (original) =>
    fast({
      get(arg0, arg1) {
        const id = arg1 !== void 0 ? arg1 : arg0;
        const table = arg1 !== void 0 ? arg0 : void 0;
        if (typeof id === "string") {
          let doc;
          try {
            doc = native.dbGet(table, id);
          } catch (e) {
            return dbFailure(e);
          }
          if (doc === null) return NONE;
          if (doc !== void 0) return doc;
        }
        return original(arg0, arg1);
      },
    }.get);
  const fastInsert = (original) =>
    fast({
      insert(table, value) {
        let id;
        try {
          id = native.dbInsert(table, value);
        } catch (e) {
          return dbFailure(e);
        }
        return id !== void 0 ? id : original(table, value);
      },
    }.insert);
  const fastPatch = (original) =>
    fast({
      patch(arg0, arg1, arg2) {
        const id = arg2 !== void 0 ? arg1 : arg0;
        const value = arg2 !== void 0 ? arg2 : arg1;
        let done;
        try {
          done = native.dbPatch(id, value);
        } catch (e) {
          return dbFailure(e);
        }
        return done === true ? DONE : original(arg0, arg1, arg2);
      },
    }.patch);
  const reader = (r) => {
    if (!fastDb.has(r.get)) r.get = fastGet(r.get);
    return r;
  };
  const writer = (w) => {
    reader(w);
    if (!fastDb.has(w.insert)) w.insert = fastInsert(w.insert);
    if (!fastDb.has(w.patch)) w.patch = fastPatch(w.patch);
    return w;
  };

  // A query or mutation the package's (edited) `invokeQuery`/`invokeMutation` handed over
  // instead of awaiting it in two more async functions: the runtime drives the handler's
  // promise itself, then `__kiln_settled` finishes the result as the package would
  // (`validateReturnValue`, `convexToJson`), and `__kiln_failed` has a failure go through
  // the package's `invokeFunction` (which serializes `ConvexError` data) first.
  let direct = false;
  let validateResult = null;
  let resultToJson = null;
  let invokeThrowing = null;
  // The package's functions the edited invokers pass on, kept while the contexts are built.
  let pkg = null;
  function invokeDirect(func, ctx, args, validateReturnValue, convexToJson, invokeFunction) {
    if (warming !== null) {
      contexts[warming.kind][warming.visibility] = ctx;
      pkg = { validateReturnValue, convexToJson, invokeFunction };
      return undefined;
    }
    direct = true;
    validateResult = validateReturnValue;
    resultToJson = convexToJson;
    invokeThrowing = invokeFunction;
    // (A spread runs the iterator protocol; the package's arguments are one object.)
    return Promise.resolve(args.length === 1 ? func(ctx, args[0]) : func(ctx, ...args));
  }

  // The kinds whose (edited) invoker takes its arguments from `takeArgs`: the dispatcher then
  // hands it this marker instead of the arguments' JSON, and the runtime builds the values
  // directly (no JSON text and no `JSON.parse`); the package's `jsonToConvex` decodes anything
  // else, and what the runtime leaves to it.
  const DIRECT_ARGS = "\u0000kiln:args";
  const directArgs = { query: false, mutation: false };
  // The package's `jsonToConvex`, kept while the contexts are built.
  let decodeJson = null;
  function takeArgs(argsStr, jsonToConvex) {
    if (warming !== null) {
      decodeJson = jsonToConvex;
      return [];
    }
    if (argsStr === DIRECT_ARGS) {
      const args = native.args();
      if (args !== undefined) return args;
      argsStr = native.argsJson();
    }
    return jsonToConvex(JSON.parse(argsStr));
  }

  // The context objects of the edited invokers, built while the app loads (from the package's
  // own object literal: the invoker runs once per visibility with `warming` set). They hold
  // only the memoized, stateless parts and closures over nothing of a call, so, like those,
  // they can be shared: every call runs in a fresh instance of the snapshot.
  const contexts = { query: {}, mutation: {} };
  let warming = null;
  function ready(kind, invoke) {
    if (!Object.hasOwn(directArgs, kind)) return;
    directArgs[kind] = true;
    for (const visibility of ["public", "internal"]) {
      warming = { kind, visibility };
      try {
        invoke(visibility);
      } catch {
        // Left to be built in each call.
      } finally {
        warming = null;
      }
    }
  }
  const context = (kind, visibility) => contexts[kind][visibility];

  // What the package's function factories made (the SDK's edit calls `made` right after a
  // factory sets the function's invoker): the invoker and the handler and visibility it
  // closes over, on the function under a key no one else has. While a function's invoker is
  // still that one, the dispatcher does what it would do (the edited `invokeQuery(handler,
  // argsStr, visibility)`) itself, without the three calls in between (an empty query
  // ~31.4k → ~28.8k fuel).
  const MADE = Symbol("kiln.made");
  function made(func, kind, handler, visibility) {
    const query = kind === "query";
    const invoker = query ? func.invokeQuery : func.invokeMutation;
    // Numbers and a flag, not the strings: a string used as a key costs an atom lookup.
    const record = { invoker, kind: query ? 0 : 1, handler, internal: visibility === "internal" };
    Object.defineProperty(func, MADE, { value: record });
  }

  // Natives the SDK points parts of the `convex` package at when it bundles: value codecs,
  // called first by the package's `jsonToConvex`, `convexToJson` and `patchValueToJson`
  // (`undefined` means "run the original"), a syscall taking and returning values, and the
  // fast database methods above for the package's `setupReader` and `setupWriter`.
  Object.defineProperty(globalThis, "__kiln_fast", {
    value: Object.freeze({
      jsonToConvex: native.jsonToConvex,
      convexToJson: native.convexToJson,
      patchValueToJson: native.patchValueToJson,
      syscall: native.syscallValue,
      reader,
      writer,
      // The results of a query in one native call (the package's `jsonToConvex` decodes
      // what the native leaves to it).
      take: (query, n) => native.queryTake(query, n, decodeJson),
      invoke: invokeDirect,
      args: takeArgs,
      context,
      ready,
      made,
    }),
    writable: false,
    configurable: false,
    enumerable: false,
  });

  // ---- console ---------------------------------------------------------------------------
  function inspect(value, depth, seen) {
    if (typeof value === "string") return depth === 0 ? value : JSON.stringify(value);
    if (typeof value === "bigint") return `${value}n`;
    if (typeof value === "symbol") return value.toString();
    if (typeof value === "function") return `[Function${value.name ? `: ${value.name}` : " (anonymous)"}]`;
    if (value === null || typeof value !== "object") return String(value);
    if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : `${value.name}: ${value.message}`;
    if (seen.includes(value)) return "[Circular]";
    if (depth > 4) return Array.isArray(value) ? "[Array]" : "[Object]";
    seen = seen.concat([value]);
    if (Array.isArray(value)) return `[ ${value.map((v) => inspect(v, depth + 1, seen)).join(", ")} ]`;
    if (value instanceof ArrayBuffer) return `ArrayBuffer { byteLength: ${value.byteLength} }`;
    if (value instanceof Date) return value.toISOString();
    if (value instanceof Map) return `Map(${value.size}) { ${[...value].map(([k, v]) => `${inspect(k, depth + 1, seen)} => ${inspect(v, depth + 1, seen)}`).join(", ")} }`;
    if (value instanceof Set) return `Set(${value.size}) { ${[...value].map((v) => inspect(v, depth + 1, seen)).join(", ")} }`;
    const entries = Object.entries(value).map(([k, v]) => `${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${inspect(v, depth + 1, seen)}`);
    return entries.length ? `{ ${entries.join(", ")} }` : "{}";
  }
  const format = (args) => args.map((a) => inspect(a, 0, [])).join(" ");
  const LEVELS = { debug: 0, info: 1, log: 2, warn: 3, error: 4 };
  const console = {};
  for (const [name, level] of Object.entries(LEVELS)) console[name] = (...args) => native.log(level, format(args));
  console.trace = (...args) => native.log(0, format(args));
  console.assert = (cond, ...args) => {
    if (!cond) native.log(4, `Assertion failed${args.length ? ": " + format(args) : ""}`);
  };
  // Timers and counters, with the warnings Node and Convex give for a label misused.
  const timers = new Map();
  const elapsed = (label, args) => {
    if (!timers.has(label)) {
      native.log(3, `Timer '${label}' does not exist`);
      return false;
    }
    native.log(2, `${label}: ${Date.now() - timers.get(label)}ms${args.length ? " " + format(args) : ""}`);
    return true;
  };
  console.time = (label = "default") => {
    label = String(label);
    if (timers.has(label)) native.log(3, `Timer '${label}' already exists`);
    else timers.set(label, Date.now());
  };
  console.timeLog = (label = "default", ...args) => void elapsed(String(label), args);
  console.timeEnd = (label = "default") => {
    label = String(label);
    if (elapsed(label, [])) timers.delete(label);
  };
  const counts = new Map();
  console.count = (label = "default") => {
    label = String(label);
    const n = (counts.get(label) ?? 0) + 1;
    counts.set(label, n);
    native.log(2, `${label}: ${n}`);
  };
  console.countReset = (label = "default") => {
    label = String(label);
    if (counts.has(label)) counts.set(label, 0);
    else native.log(3, `Count for '${label}' does not exist`);
  };
  define("console", console);

  // ---- time and randomness: only from the host, per call --------------------------------
  Math.random = () => native.random();
  Date.now = () => native.now();

  function randomBytes(n) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const r = native.randomU32();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (r >>> (8 * j)) & 0xff;
    }
    return out;
  }
  define("crypto", {
    getRandomValues(array) {
      if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
        throw new TypeError("crypto.getRandomValues: argument must be an integer typed array");
      }
      if (array.byteLength > 65536) throw new RangeError("crypto.getRandomValues: at most 65536 bytes");
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(randomBytes(array.byteLength));
      return array;
    },
    randomUUID() {
      const b = randomBytes(16);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
  });

  // ---- crypto.subtle: digests and HMAC (natives in crypto.rs), RSA and ECDSA signatures
  // (natives in asym.rs) ----------------------------------------------------------------------
  class DOMException extends Error {
    constructor(message = "", name = "Error") {
      super(message);
      this.name = name;
    }
  }
  if (typeof globalThis.DOMException === "undefined") define("DOMException", DOMException);
  const notSupported = (what) => new DOMException(`${what} is not supported yet`, "NotSupportedError");
  const HASHES = ["SHA-1", "SHA-256", "SHA-384", "SHA-512"];
  const algorithmName = (algorithm) => String(typeof algorithm === "string" ? algorithm : algorithm?.name);
  const hashOf = (algorithm) => {
    const name = algorithmName(algorithm).toUpperCase();
    if (!HASHES.includes(name)) throw notSupported(`the hash ${algorithmName(algorithm)}`);
    return name;
  };
  // A copy of a BufferSource's bytes as an ArrayBuffer.
  const bufferOf = (data, what) => {
    if (data instanceof ArrayBuffer) return data.slice(0);
    if (ArrayBuffer.isView(data)) return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    throw new TypeError(`${what} must be an ArrayBuffer or a view of one`);
  };
  const base64url = {
    decode: (s) => Uint8Array.from(atob(String(s).replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(String(s).length / 4) * 4, "=")), (c) => c.charCodeAt(0)).buffer,
    encode: (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""),
  };
  const secrets = new WeakMap();
  // A key's material: an HMAC key's secret (an ArrayBuffer), or an asymmetric key's
  // `{kind, der}` (`RSA`, `P-256` or `P-384`; SPKI or PKCS #8).
  class CryptoKey {
    constructor(secret, algorithm, extractable, usages, type = "secret") {
      secrets.set(this, secret);
      this.type = type;
      this.extractable = extractable;
      this.algorithm = algorithm;
      this.usages = usages;
      Object.freeze(this);
    }
  }
  define("CryptoKey", CryptoKey);
  const hmacKey = (algorithm, secret, extractable, usages) => {
    const hash = hashOf(algorithm.hash);
    for (const u of usages) {
      if (u !== "sign" && u !== "verify") throw new SyntaxError(`an HMAC key cannot be used to ${u}`);
    }
    return new CryptoKey(secret, { name: "HMAC", hash: { name: hash }, length: secret.byteLength * 8 }, !!extractable, [...usages]);
  };
  const keySecret = (key, usage) => {
    const secret = secrets.get(key);
    if (secret === undefined) throw new TypeError("not a CryptoKey");
    if (!key.usages.includes(usage)) throw new DOMException(`the key may not be used to ${usage}`, "InvalidAccessError");
    return secret;
  };
  const isHmac = (algorithm, what) => {
    if (algorithmName(algorithm).toUpperCase() !== "HMAC") throw notSupported(`${what} with ${algorithmName(algorithm)}`);
  };
  // Web Crypto's names of the signature algorithms, by their upper-case form.
  const SIGNATURES = { "RSASSA-PKCS1-V1_5": "RSASSA-PKCS1-v1_5", "RSA-PSS": "RSA-PSS", ECDSA: "ECDSA" };
  const signatureName = (algorithm) => SIGNATURES[algorithmName(algorithm).toUpperCase()];
  const curveOf = (algorithm) => {
    const curve = String(algorithm?.namedCurve);
    if (curve !== "P-256" && curve !== "P-384") throw notSupported(`the curve ${curve}`);
    return curve;
  };
  const jwkAlg = (a) =>
    a.name === "ECDSA" ? (a.namedCurve === "P-256" ? "ES256" : "ES384") : `${a.name === "RSA-PSS" ? "PS" : "RS"}${a.hash.name.slice(4)}`;
  const asymmetricKey = (name, format, keyData, algorithm, extractable, usages) => {
    const kind = name === "ECDSA" ? curveOf(algorithm) : "RSA";
    const hash = name === "ECDSA" ? null : hashOf(algorithm?.hash);
    let imported;
    try {
      if (format === "jwk") {
        if (keyData === null || typeof keyData !== "object") throw new TypeError("keyData must be a JWK object");
        imported = native.asymImport(kind, format, undefined, JSON.stringify(keyData));
      } else {
        imported = native.asymImport(kind, format, bufferOf(keyData, "keyData"), undefined);
      }
    } catch (e) {
      throw new DataError(e.message);
    }
    const [isPrivate, der, bits] = imported;
    const allowed = isPrivate ? "sign" : "verify";
    for (const u of usages) {
      if (u !== allowed) throw new SyntaxError(`a ${isPrivate ? "private" : "public"} ${name} key cannot be used to ${u}`);
    }
    const alg = name === "ECDSA" ? { name, namedCurve: kind } : { name, hash: { name: hash }, modulusLength: bits };
    return new CryptoKey({ kind, der }, alg, !!extractable, [...usages], isPrivate ? "private" : "public");
  };
  // The scheme asym.rs signs with, after checking that `key` is a key of `algorithm`.
  const schemeOf = (algorithm, key) => {
    const name = signatureName(algorithm);
    if (name === undefined || key?.algorithm?.name !== name) {
      throw new DOMException(`the key is not a ${algorithmName(algorithm)} key`, "InvalidAccessError");
    }
    return name === "ECDSA" ? key.algorithm.namedCurve : name;
  };
  const signatureHash = (algorithm, key) => (key.algorithm.name === "ECDSA" ? hashOf(algorithm.hash) : key.algorithm.hash.name);
  const saltOf = (algorithm) => (algorithm?.saltLength === undefined ? undefined : Number(algorithm.saltLength));
  // Each method answers with a promise, rejected on bad input, as Web Crypto does.
  const promised = (f) => (...args) => {
    try {
      return resolved(f(...args));
    } catch (e) {
      return rejected(e);
    }
  };
  const subtle = {
    digest: promised((algorithm, data) => native.digest(hashOf(algorithm), bufferOf(data, "data"))),
    importKey: promised((format, keyData, algorithm, extractable, usages) => {
      const signature = signatureName(algorithm);
      if (signature !== undefined) return asymmetricKey(signature, format, keyData, algorithm, extractable, usages);
      isHmac(algorithm, "crypto.subtle.importKey");
      if (format === "raw") return hmacKey(algorithm, bufferOf(keyData, "keyData"), extractable, usages);
      if (format === "jwk") {
        if (keyData?.kty !== "oct" || typeof keyData.k !== "string") throw new DataError("an HMAC JWK needs kty \"oct\" and k");
        return hmacKey(algorithm, base64url.decode(keyData.k), extractable, usages);
      }
      throw notSupported(`crypto.subtle.importKey of format ${format}`);
    }),
    exportKey: promised((format, key) => {
      const secret = secrets.get(key);
      if (secret === undefined) throw new TypeError("not a CryptoKey");
      if (!key.extractable) throw new DOMException("the key is not extractable", "InvalidAccessError");
      if (key.type !== "secret") {
        let out;
        try {
          out = native.asymExport(secret.kind, String(format), secret.der, key.type === "private");
        } catch (e) {
          throw new DOMException(e.message, "NotSupportedError");
        }
        if (format !== "jwk") return out;
        return { ...JSON.parse(new TextDecoder().decode(out)), alg: jwkAlg(key.algorithm), ext: true, key_ops: [...key.usages] };
      }
      if (format === "raw") return secret.slice(0);
      if (format === "jwk") {
        const bits = key.algorithm.hash.name.slice(4);
        return { kty: "oct", k: base64url.encode(secret), alg: `HS${bits}`, ext: true, key_ops: [...key.usages] };
      }
      throw notSupported(`crypto.subtle.exportKey of format ${format}`);
    }),
    generateKey: promised((algorithm, extractable, usages) => {
      const signature = signatureName(algorithm);
      if (signature === "ECDSA") {
        const curve = curveOf(algorithm);
        const [pkcs8, spki] = native.asymGenerate(curve);
        const alg = { name: "ECDSA", namedCurve: curve };
        return {
          privateKey: new CryptoKey({ kind: curve, der: pkcs8 }, alg, !!extractable, usages.filter((u) => u === "sign"), "private"),
          publicKey: new CryptoKey({ kind: curve, der: spki }, alg, true, usages.filter((u) => u === "verify"), "public"),
        };
      }
      // Finding RSA primes in the guest would take seconds of a call's fuel: import a key.
      if (signature !== undefined) throw notSupported(`crypto.subtle.generateKey of ${signature} keys (import one instead)`);
      isHmac(algorithm, "crypto.subtle.generateKey");
      const hash = hashOf(algorithm.hash);
      const bits = algorithm.length ?? (hash === "SHA-384" || hash === "SHA-512" ? 1024 : 512);
      return hmacKey(algorithm, randomBytes(Math.ceil(bits / 8)).buffer, extractable, usages);
    }),
    sign: promised((algorithm, key, data) => {
      if (signatureName(algorithm) !== undefined) {
        const scheme = schemeOf(algorithm, key);
        const { der } = keySecret(key, "sign");
        try {
          return native.asymSign(scheme, signatureHash(algorithm, key), der, bufferOf(data, "data"), saltOf(algorithm));
        } catch (e) {
          throw new DOMException(e.message, "OperationError");
        }
      }
      isHmac(algorithm, "crypto.subtle.sign");
      return native.hmac(key.algorithm.hash.name, keySecret(key, "sign"), bufferOf(data, "data"));
    }),
    verify: promised((algorithm, key, signature, data) => {
      if (signatureName(algorithm) !== undefined) {
        const scheme = schemeOf(algorithm, key);
        const { der } = keySecret(key, "verify");
        const hash = signatureHash(algorithm, key);
        return native.asymVerify(scheme, hash, der, bufferOf(signature, "signature"), bufferOf(data, "data"), saltOf(algorithm));
      }
      isHmac(algorithm, "crypto.subtle.verify");
      const expected = new Uint8Array(native.hmac(key.algorithm.hash.name, keySecret(key, "verify"), bufferOf(data, "data")));
      const given = new Uint8Array(bufferOf(signature, "signature"));
      // Every byte is compared, whatever differs first.
      let diff = expected.length ^ given.length;
      for (let i = 0; i < expected.length; i++) diff |= expected[i] ^ (given[i] ?? 0);
      return diff === 0;
    }),
  };
  class DataError extends DOMException {
    constructor(message) {
      super(message, "DataError");
    }
  }
  for (const name of ["encrypt", "decrypt", "deriveBits", "deriveKey", "wrapKey", "unwrapKey"]) {
    subtle[name] = () => rejected(notSupported(`crypto.subtle.${name}`));
  }
  Object.defineProperty(globalThis.crypto, "subtle", { value: Object.freeze(subtle), enumerable: true });

  // ---- structuredClone -------------------------------------------------------------------
  define("structuredClone", function structuredClone(value) {
    const seen = new Map();
    const clone = (v) => {
      if (v === null || typeof v !== "object") {
        if (typeof v === "function" || typeof v === "symbol") throw new TypeError(`structuredClone: ${typeof v} could not be cloned`);
        return v;
      }
      if (seen.has(v)) return seen.get(v);
      let out;
      if (Array.isArray(v)) {
        out = [];
        seen.set(v, out);
        v.forEach((x, i) => (out[i] = clone(x)));
        return out;
      }
      if (v instanceof Date) return new Date(v.getTime());
      if (v instanceof RegExp) return new RegExp(v.source, v.flags);
      if (v instanceof ArrayBuffer) return v.slice(0);
      if (ArrayBuffer.isView(v)) return new v.constructor(clone(v.buffer), v.byteOffset, v instanceof DataView ? v.byteLength : v.length);
      if (v instanceof Map) {
        out = new Map();
        seen.set(v, out);
        v.forEach((x, k) => out.set(clone(k), clone(x)));
        return out;
      }
      if (v instanceof Set) {
        out = new Set();
        seen.set(v, out);
        v.forEach((x) => out.add(clone(x)));
        return out;
      }
      if (v instanceof Error) {
        out = new v.constructor(v.message);
        if (v.stack) out.stack = v.stack;
        return out;
      }
      out = {};
      seen.set(v, out);
      for (const k of Object.keys(v)) out[k] = clone(v[k]);
      return out;
    };
    return clone(value);
  });

  // ---- base64 ----------------------------------------------------------------------------
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  define("btoa", function btoa(input) {
    const s = String(input);
    let out = "";
    for (let i = 0; i < s.length; i += 3) {
      const codes = [s.charCodeAt(i), s.charCodeAt(i + 1), s.charCodeAt(i + 2)];
      for (const c of codes) if (c > 255) throw new Error("btoa: the string contains characters outside of Latin1");
      const [a, b, c] = codes;
      out += B64[a >> 2] + B64[((a & 3) << 4) | ((b || 0) >> 4)];
      out += i + 1 < s.length ? B64[((b & 15) << 2) | ((c || 0) >> 6)] : "=";
      out += i + 2 < s.length ? B64[c & 63] : "=";
    }
    return out;
  });
  define("atob", function atob(input) {
    let s = String(input).replace(/[\t\n\f\r ]/g, "");
    if (s.length % 4 === 0) s = s.replace(/==?$/, "");
    if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s)) throw new Error("atob: the string is not correctly encoded");
    let out = "";
    let bits = 0;
    let acc = 0;
    for (const ch of s) {
      acc = (acc << 6) | B64.indexOf(ch);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += String.fromCharCode((acc >> bits) & 255);
      }
    }
    return out;
  });

  // ---- URL and URLSearchParams -----------------------------------------------------------
  const encodeForm = (s) => encodeURIComponent(s).replace(/%20/g, "+").replace(/[!'()~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  const decodeForm = (s) => {
    try {
      return decodeURIComponent(s.replace(/\+/g, " "));
    } catch {
      return s;
    }
  };
  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = "") {
      if (typeof init === "string") {
        this.#parse(init);
      } else if (init instanceof URLSearchParams) {
        this.#list = [...init];
      } else if (init && typeof init[Symbol.iterator] === "function") {
        for (const pair of init) {
          const [k, v] = [...pair];
          this.#list.push([String(k), String(v)]);
        }
      } else if (init && typeof init === "object") {
        for (const k of Object.keys(init)) this.#list.push([k, String(init[k])]);
      }
    }
    #parse(s) {
      this.#list = [];
      for (const part of s.replace(/^\?/, "").split("&")) {
        if (!part) continue;
        const i = part.indexOf("=");
        this.#list.push(i < 0 ? [decodeForm(part), ""] : [decodeForm(part.slice(0, i)), decodeForm(part.slice(i + 1))]);
      }
    }
    static _bind(params, url, query) {
      params.#url = url;
      params.#parse(query);
    }
    #update() {
      if (this.#url) this.#url._setSearch(this.toString());
    }
    get size() {
      return this.#list.length;
    }
    append(k, v) {
      this.#list.push([String(k), String(v)]);
      this.#update();
    }
    delete(k) {
      this.#list = this.#list.filter(([n]) => n !== String(k));
      this.#update();
    }
    get(k) {
      const e = this.#list.find(([n]) => n === String(k));
      return e ? e[1] : null;
    }
    getAll(k) {
      return this.#list.filter(([n]) => n === String(k)).map(([, v]) => v);
    }
    has(k) {
      return this.#list.some(([n]) => n === String(k));
    }
    set(k, v) {
      const i = this.#list.findIndex(([n]) => n === String(k));
      if (i < 0) this.#list.push([String(k), String(v)]);
      else this.#list = this.#list.filter(([n], j) => j <= i || n !== String(k)).map((e, j) => (j === i ? [String(k), String(v)] : e));
      this.#update();
    }
    sort() {
      this.#list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      this.#update();
    }
    forEach(f, self) {
      for (const [k, v] of this.#list) f.call(self, v, k, this);
    }
    keys() {
      return this.#list.map(([k]) => k)[Symbol.iterator]();
    }
    values() {
      return this.#list.map(([, v]) => v)[Symbol.iterator]();
    }
    entries() {
      return this.#list.map((e) => [...e])[Symbol.iterator]();
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    toString() {
      return this.#list.map(([k, v]) => `${encodeForm(k)}=${encodeForm(v)}`).join("&");
    }
  }
  const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21" };
  const URL_RE = /^([A-Za-z][A-Za-z0-9+.-]*:)(\/\/(?:([^/?#@]*)@)?(\[[^\]]*\]|[^/?#:]*)(?::(\d*))?)?([^?#]*)(\?[^#]*)?(#.*)?$/;
  class URL {
    #p;
    #params = new URLSearchParams();
    constructor(url, base) {
      let s = String(url).trim();
      if (base !== undefined && !/^[A-Za-z][A-Za-z0-9+.-]*:/.test(s)) {
        const b = new URL(base);
        if (s.startsWith("//")) s = b.protocol + s;
        else if (s.startsWith("/")) s = b.origin + s;
        else if (s.startsWith("?")) s = b.origin + b.pathname + s;
        else if (s.startsWith("#")) s = b.origin + b.pathname + b.search + s;
        else s = b.origin + b.pathname.replace(/[^/]*$/, "") + s;
      }
      const m = URL_RE.exec(s);
      if (!m) throw new TypeError(`Invalid URL: ${url}`);
      const [, protocol, authority, userinfo = "", hostname = "", port = "", path = "", search = "", hash = ""] = m;
      const special = protocol.toLowerCase() in DEFAULT_PORTS || protocol.toLowerCase() === "file:";
      if (special && authority === undefined && protocol.toLowerCase() !== "file:") throw new TypeError(`Invalid URL: ${url}`);
      const [username = "", password = ""] = userinfo.split(":");
      this.#p = {
        protocol: protocol.toLowerCase(),
        username,
        password,
        hostname: hostname.toLowerCase(),
        port: DEFAULT_PORTS[protocol.toLowerCase()] === port ? "" : port,
        pathname: normalizePath(path, special),
        search: search === "?" ? "" : search,
        hash: hash === "#" ? "" : hash,
        authority: authority !== undefined,
      };
      URLSearchParams._bind(this.#params, this, this.#p.search);
    }
    static canParse(url, base) {
      try {
        new URL(url, base);
        return true;
      } catch {
        return false;
      }
    }
    _setSearch(query) {
      this.#p.search = query ? `?${query}` : "";
    }
    get protocol() {
      return this.#p.protocol;
    }
    get username() {
      return this.#p.username;
    }
    get password() {
      return this.#p.password;
    }
    get hostname() {
      return this.#p.hostname;
    }
    get port() {
      return this.#p.port;
    }
    get host() {
      return this.#p.port ? `${this.#p.hostname}:${this.#p.port}` : this.#p.hostname;
    }
    get origin() {
      return this.#p.protocol in DEFAULT_PORTS ? `${this.#p.protocol}//${this.host}` : "null";
    }
    get pathname() {
      return this.#p.pathname;
    }
    set pathname(v) {
      this.#p.pathname = normalizePath(String(v).startsWith("/") ? String(v) : "/" + v, true);
    }
    get search() {
      return this.#p.search;
    }
    set search(v) {
      const s = String(v).replace(/^\?/, "");
      this.#p.search = s ? `?${s}` : "";
      URLSearchParams._bind(this.#params, this, this.#p.search);
    }
    get searchParams() {
      return this.#params;
    }
    get hash() {
      return this.#p.hash;
    }
    set hash(v) {
      const s = String(v).replace(/^#/, "");
      this.#p.hash = s ? `#${s}` : "";
    }
    get href() {
      const p = this.#p;
      const cred = p.username ? `${p.username}${p.password ? ":" + p.password : ""}@` : "";
      const auth = p.authority ? `//${cred}${this.host}` : "";
      return `${p.protocol}${auth}${p.pathname}${p.search}${p.hash}`;
    }
    toString() {
      return this.href;
    }
    toJSON() {
      return this.href;
    }
  }
  function normalizePath(path, special) {
    if (!special) return path;
    const out = [];
    for (const seg of (path || "/").split("/").slice(1)) {
      if (seg === "..") out.pop();
      else if (seg !== ".") out.push(seg);
    }
    return "/" + out.join("/");
  }
  define("URL", URL);
  define("URLSearchParams", URLSearchParams);

  // ---- process.env -----------------------------------------------------------------------
  define("process", {
    get env() {
      return Object.freeze(JSON.parse(native.env()));
    },
  });

  // ---- Headers, Response, fetch and timers (actions) -------------------------------------
  class Headers {
    #h = new Map();
    constructor(init) {
      if (init instanceof Headers) init.forEach((v, k) => this.append(k, v));
      else if (Array.isArray(init)) init.forEach(([k, v]) => this.append(k, v));
      else if (init) Object.keys(init).forEach((k) => this.append(k, init[k]));
    }
    append(k, v) {
      const key = String(k).toLowerCase();
      this.#h.set(key, this.#h.has(key) ? `${this.#h.get(key)}, ${v}` : String(v));
    }
    set(k, v) {
      this.#h.set(String(k).toLowerCase(), String(v));
    }
    get(k) {
      const v = this.#h.get(String(k).toLowerCase());
      return v === undefined ? null : v;
    }
    has(k) {
      return this.#h.has(String(k).toLowerCase());
    }
    delete(k) {
      this.#h.delete(String(k).toLowerCase());
    }
    forEach(f, self) {
      [...this.#h].sort().forEach(([k, v]) => f.call(self, v, k, this));
    }
    entries() {
      return [...this.#h].sort()[Symbol.iterator]();
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  // ---- Blob, File, FormData, ReadableStream, bodies ------------------------------------------
  const encoder = new TextEncoder();
  const viewBytes = (v) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  // A blob's bytes, read synchronously by bodies and streams.
  const blobBytes = new WeakMap();
  class Blob {
    #bytes;
    #type;
    constructor(parts = [], options = {}) {
      const chunks = [];
      for (const part of parts) {
        if (part instanceof Blob) chunks.push(part.#bytes);
        else if (part instanceof ArrayBuffer) chunks.push(new Uint8Array(part));
        else if (ArrayBuffer.isView(part)) chunks.push(viewBytes(part));
        else chunks.push(encoder.encode(String(part)));
      }
      const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      this.#bytes = out;
      blobBytes.set(this, out);
      const type = String(options.type ?? "");
      this.#type = /^[\x20-\x7e]*$/.test(type) ? type.toLowerCase() : "";
    }
    get size() {
      return this.#bytes.length;
    }
    get type() {
      return this.#type;
    }
    slice(start = 0, end = this.#bytes.length, type = "") {
      const n = this.#bytes.length;
      const clamp = (i) => (i < 0 ? Math.max(n + i, 0) : Math.min(i, n));
      return new Blob([this.#bytes.slice(clamp(start), clamp(end))], { type });
    }
    async arrayBuffer() {
      return this.#bytes.slice().buffer;
    }
    async bytes() {
      return this.#bytes.slice();
    }
    async text() {
      return new TextDecoder().decode(this.#bytes);
    }
    stream() {
      const bytes = this.#bytes.slice();
      return new ReadableStream({
        start(controller) {
          if (bytes.length) controller.enqueue(bytes);
          controller.close();
        },
      });
    }
    get [Symbol.toStringTag]() {
      return "Blob";
    }
  }
  class File extends Blob {
    constructor(parts, name, options = {}) {
      super(parts, options);
      this.name = String(name);
      this.lastModified = options.lastModified ?? Date.now();
    }
    get [Symbol.toStringTag]() {
      return "File";
    }
  }
  // A stream whose source enqueues synchronously (bodies, blobs) or from async pulls.
  class ReadableStream {
    #queue = [];
    #closed = false;
    #error;
    #pull;
    #controller;
    #locked = false;
    constructor(source = {}) {
      const self = this;
      this.#controller = {
        enqueue: (chunk) => self.#queue.push(chunk),
        close: () => (self.#closed = true),
        error: (e) => (self.#error = e ?? new TypeError("the stream errored")),
        get desiredSize() {
          return 1;
        },
      };
      this.#pull = source.pull?.bind(source);
      source.start?.(this.#controller);
    }
    get locked() {
      return this.#locked;
    }
    getReader() {
      if (this.#locked) throw new TypeError("ReadableStream is locked");
      this.#locked = true;
      const next = async () => {
        while (this.#queue.length === 0 && !this.#closed && this.#error === undefined && this.#pull) {
          await this.#pull(this.#controller);
          if (this.#queue.length === 0 && !this.#closed && this.#error === undefined) break;
        }
        if (this.#error !== undefined) throw this.#error;
        if (this.#queue.length) return { value: this.#queue.shift(), done: false };
        return { value: undefined, done: true };
      };
      return {
        read: next,
        releaseLock: () => (this.#locked = false),
        cancel: async () => {
          this.#queue = [];
          this.#closed = true;
        },
        closed: NativePromise.resolve(undefined),
      };
    }
    async cancel() {
      this.#queue = [];
      this.#closed = true;
    }
    async *[Symbol.asyncIterator]() {
      const reader = this.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        yield value;
      }
    }
  }
  class FormData {
    #entries = [];
    static #value(value, filename) {
      if (value instanceof Blob) {
        if (value instanceof File && filename === undefined) return value;
        return new File([value], filename ?? (value instanceof File ? value.name : "blob"), { type: value.type });
      }
      return String(value);
    }
    append(name, value, filename) {
      this.#entries.push([String(name), FormData.#value(value, filename)]);
    }
    set(name, value, filename) {
      const key = String(name);
      const entry = [key, FormData.#value(value, filename)];
      const i = this.#entries.findIndex(([k]) => k === key);
      this.#entries = this.#entries.filter(([k], j) => k !== key || j === i);
      if (i < 0) this.#entries.push(entry);
      else this.#entries[this.#entries.findIndex(([k]) => k === key)] = entry;
    }
    get(name) {
      const found = this.#entries.find(([k]) => k === String(name));
      return found ? found[1] : null;
    }
    getAll(name) {
      return this.#entries.filter(([k]) => k === String(name)).map(([, v]) => v);
    }
    has(name) {
      return this.#entries.some(([k]) => k === String(name));
    }
    delete(name) {
      this.#entries = this.#entries.filter(([k]) => k !== String(name));
    }
    forEach(f, self) {
      for (const [k, v] of this.#entries) f.call(self, v, k, this);
    }
    entries() {
      return this.#entries.map((e) => [...e])[Symbol.iterator]();
    }
    keys() {
      return this.#entries.map(([k]) => k)[Symbol.iterator]();
    }
    values() {
      return this.#entries.map(([, v]) => v)[Symbol.iterator]();
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  const quoted = (s) => String(s).replace(/\r/g, "%0D").replace(/\n/g, "%0A").replace(/"/g, "%22");
  // multipart/form-data with a fresh boundary: [bytes, content type].
  const multipart = (form) => {
    const boundary = `----kiln${crypto.randomUUID().replace(/-/g, "")}`;
    const parts = [];
    for (const [name, value] of form) {
      let head = `--${boundary}\r\nContent-Disposition: form-data; name="${quoted(name)}"`;
      if (value instanceof File) {
        head += `; filename="${quoted(value.name)}"\r\nContent-Type: ${value.type || "application/octet-stream"}`;
        parts.push(`${head}\r\n\r\n`, value, "\r\n");
      } else {
        parts.push(`${head}\r\n\r\n${value}\r\n`);
      }
    }
    parts.push(`--${boundary}--\r\n`);
    return [new Blob(parts), `multipart/form-data; boundary=${boundary}`];
  };
  const indexOf = (bytes, pattern, from) => {
    outer: for (let i = from; i <= bytes.length - pattern.length; i++) {
      for (let j = 0; j < pattern.length; j++) if (bytes[i + j] !== pattern[j]) continue outer;
      return i;
    }
    return -1;
  };
  const parseMultipart = (bytes, boundary) => {
    const form = new FormData();
    const decoder = new TextDecoder();
    const delimiter = encoder.encode(`--${boundary}`);
    let at = indexOf(bytes, delimiter, 0);
    if (at < 0) throw new TypeError("the body is not multipart/form-data with this boundary");
    for (;;) {
      at += delimiter.length;
      if (bytes[at] === 45 && bytes[at + 1] === 45) return form; // "--": the end
      at += 2; // CRLF
      const headEnd = indexOf(bytes, encoder.encode("\r\n\r\n"), at);
      if (headEnd < 0) throw new TypeError("a multipart part has no end of headers");
      const head = decoder.decode(bytes.subarray(at, headEnd));
      const next = indexOf(bytes, encoder.encode(`\r\n--${boundary}`), headEnd + 4);
      if (next < 0) throw new TypeError("a multipart part is not terminated");
      const content = bytes.slice(headEnd + 4, next);
      const disposition = /content-disposition:[^\r\n]*/i.exec(head)?.[0] ?? "";
      const name = /\bname="([^"]*)"/i.exec(disposition)?.[1];
      const filename = /\bfilename="([^"]*)"/i.exec(disposition)?.[1];
      const type = /content-type:\s*([^\r\n]*)/i.exec(head)?.[1] ?? "";
      if (name !== undefined) {
        if (filename !== undefined) form.append(name, new File([content], filename, { type }));
        else form.append(name, decoder.decode(content));
      }
      at = next + 2;
    }
  };
  // A body's bytes and the content type it implies.
  const extract = (body) => {
    if (body === undefined || body === null) return [null, null];
    if (typeof body === "string") return [encoder.encode(body), "text/plain;charset=UTF-8"];
    if (body instanceof ArrayBuffer) return [new Uint8Array(body.slice(0)), null];
    if (ArrayBuffer.isView(body)) return [viewBytes(body).slice(), null];
    if (body instanceof URLSearchParams) return [encoder.encode(body.toString()), "application/x-www-form-urlencoded;charset=UTF-8"];
    if (body instanceof Blob) return [body, body.type || null];
    if (body instanceof FormData) return multipart(body);
    if (body instanceof ReadableStream) return [body, null];
    return [encoder.encode(String(body)), "text/plain;charset=UTF-8"];
  };
  const bytesOf = async (source) => {
    if (source === null) return new Uint8Array(0);
    if (source instanceof Uint8Array) return source;
    if (source instanceof Blob) return blobBytes.get(source);
    const chunks = [];
    for await (const chunk of source) chunks.push(typeof chunk === "string" ? encoder.encode(chunk) : viewBytes(chunk));
    return blobBytes.get(new Blob(chunks));
  };
  class Body {
    #source;
    #used = false;
    constructor(body, headers) {
      const [source, type] = extract(body);
      this.#source = source;
      if (type !== null && headers && !headers.has("content-type")) headers.set("content-type", type);
    }
    get bodyUsed() {
      return this.#used;
    }
    get body() {
      if (this.#source === null) return null;
      if (this.#source instanceof ReadableStream) return this.#source;
      const source = this.#source;
      this.#source = new ReadableStream({
        start(controller) {
          const bytes = source instanceof Blob ? blobBytes.get(source) : source;
          if (bytes.length) controller.enqueue(bytes.slice());
          controller.close();
        },
      });
      return this.#source;
    }
    async #consume() {
      if (this.#used) throw new TypeError("Body is unusable: Body has already been read");
      this.#used = true;
      return bytesOf(this.#source);
    }
    // The source, for clones and for fetch (which reads it whole).
    __source() {
      return this.#source;
    }
    async arrayBuffer() {
      return (await this.#consume()).slice().buffer;
    }
    async bytes() {
      return (await this.#consume()).slice();
    }
    async text() {
      return new TextDecoder().decode(await this.#consume());
    }
    async json() {
      return JSON.parse(await this.text());
    }
    async blob() {
      return new Blob([await this.#consume()], { type: this.headers?.get("content-type") ?? "" });
    }
    async formData() {
      const type = this.headers?.get("content-type") ?? "";
      const bytes = await this.#consume();
      const boundary = /multipart\/form-data;.*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(type);
      if (boundary) return parseMultipart(bytes, boundary[1] ?? boundary[2]);
      if (/^application\/x-www-form-urlencoded/i.test(type)) {
        const form = new FormData();
        for (const [k, v] of new URLSearchParams(new TextDecoder().decode(bytes))) form.append(k, v);
        return form;
      }
      throw new TypeError(`formData(): the body's content type is ${JSON.stringify(type)}, not multipart/form-data or application/x-www-form-urlencoded`);
    }
  }
  const STATUS_TEXT = { 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error" };
  class Response extends Body {
    constructor(body, init = {}) {
      const headers = new Headers(init.headers);
      super(body, headers);
      const status = init.status ?? 200;
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        throw new RangeError(`Response status ${status} is not in the range 200 to 599`);
      }
      this.status = status;
      this.statusText = init.statusText ?? "";
      this.headers = headers;
      this.url = init.url ?? "";
      this.type = init.type ?? "default";
      this.redirected = false;
    }
    get ok() {
      return this.status >= 200 && this.status < 300;
    }
    clone() {
      if (this.bodyUsed) throw new TypeError("Response.clone: Body has already been consumed");
      return new Response(this.__source(), { status: this.status, statusText: this.statusText, headers: this.headers, url: this.url });
    }
    static json(data, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    }
    static redirect(url, status = 302) {
      if (![301, 302, 303, 307, 308].includes(status)) throw new RangeError(`${status} is not a redirect status`);
      return new Response(null, { status, headers: { location: String(new URL(url)) } });
    }
    static error() {
      const r = new Response(null, { status: 200 });
      r.status = 0;
      r.type = "error";
      return r;
    }
  }
  class Request extends Body {
    constructor(input, init = {}) {
      const from = input instanceof Request ? input : null;
      const headers = new Headers(init.headers ?? from?.headers);
      const method = String(init.method ?? from?.method ?? "GET").toUpperCase();
      const body = init.body !== undefined ? init.body : from && !from.bodyUsed ? from.__source() : undefined;
      if ((method === "GET" || method === "HEAD") && body !== undefined && body !== null) {
        throw new TypeError("Request with GET/HEAD method cannot have body.");
      }
      super(body, headers);
      this.url = from ? from.url : String(new URL(String(input)));
      this.method = method;
      this.headers = headers;
      this.signal = init.signal ?? from?.signal ?? new AbortController().signal;
      this.redirect = init.redirect ?? from?.redirect ?? "follow";
    }
    clone() {
      if (this.bodyUsed) throw new TypeError("Request.clone: Body has already been consumed");
      return new Request(this);
    }
  }

  // ---- AbortController, AbortSignal, Event, EventTarget ------------------------------------
  class Event {
    constructor(type, init = {}) {
      this.type = String(type);
      this.bubbles = !!init.bubbles;
      this.cancelable = !!init.cancelable;
      this.defaultPrevented = false;
      this.target = null;
      this.timeStamp = Date.now();
    }
    preventDefault() {
      if (this.cancelable) this.defaultPrevented = true;
    }
  }
  class EventTarget {
    #listeners = new Map();
    addEventListener(type, listener, options) {
      if (!listener) return;
      const list = this.#listeners.get(type) ?? [];
      if (!list.some((l) => l.listener === listener)) list.push({ listener, once: !!options?.once });
      this.#listeners.set(type, list);
    }
    removeEventListener(type, listener) {
      const list = this.#listeners.get(type);
      if (list) this.#listeners.set(type, list.filter((l) => l.listener !== listener));
    }
    dispatchEvent(event) {
      event.target = this;
      const handler = this[`on${event.type}`];
      if (typeof handler === "function") handler.call(this, event);
      for (const l of [...(this.#listeners.get(event.type) ?? [])]) {
        if (l.once) this.removeEventListener(event.type, l.listener);
        if (typeof l.listener === "function") l.listener.call(this, event);
        else l.listener.handleEvent(event);
      }
      return !event.defaultPrevented;
    }
  }
  class AbortSignal extends EventTarget {
    aborted = false;
    reason = undefined;
    onabort = null;
    throwIfAborted() {
      if (this.aborted) throw this.reason;
    }
    static abort(reason) {
      const c = new AbortController();
      c.abort(reason);
      return c.signal;
    }
    static any(signals) {
      const c = new AbortController();
      for (const s of signals) {
        if (s.aborted) {
          c.abort(s.reason);
          break;
        }
        s.addEventListener("abort", () => c.abort(s.reason), { once: true });
      }
      return c.signal;
    }
  }
  class AbortController {
    #signal = new AbortSignal();
    get signal() {
      return this.#signal;
    }
    abort(reason = new DOMException("This operation was aborted", "AbortError")) {
      const s = this.#signal;
      if (s.aborted) return;
      s.aborted = true;
      s.reason = reason;
      s.dispatchEvent(new Event("abort"));
    }
  }
  define("Blob", Blob);
  define("File", File);
  define("FormData", FormData);
  define("ReadableStream", ReadableStream);
  define("Event", Event);
  define("EventTarget", EventTarget);
  define("AbortSignal", AbortSignal);
  define("AbortController", AbortController);
  define("Headers", Headers);
  define("Response", Response);
  define("Request", Request);

  const inAction = () => {
    if (native.kind() !== "action") throw new Error("fetch and timers are only available in actions");
  };
  const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  const unhex = (s) => new Uint8Array(s.match(/../g) || []).map((_, i) => parseInt(s.substr(2 * i, 2), 16));
  define("fetch", async function fetch(input, init = {}) {
    inAction();
    const req = input instanceof Request && Object.keys(init).length === 0 ? input : new Request(input, init);
    req.signal?.throwIfAborted();
    const body = await req.bytes();
    const reply = JSON.parse(hostCall("kiln/fetch", JSON.stringify({ method: req.method, url: req.url, headers: [...req.headers], body: hex(body) })));
    return new Response(unhex(reply.body), { status: reply.status, headers: reply.headers, url: req.url });
  });

  // Timers of actions wait in real time: when no promise job is left, the dispatcher runs the
  // earliest, the host sleeping until it is due.
  const queue = [];
  let nextTimer = 1;
  define("setTimeout", (f, ms = 0, ...args) => {
    inAction();
    const id = nextTimer++;
    queue.push({ id, at: Date.now() + Math.max(0, Number(ms) || 0), f, args });
    return id;
  });
  define("clearTimeout", (id) => {
    const i = queue.findIndex((t) => t.id === id);
    if (i >= 0) queue.splice(i, 1);
  });
  define("__kiln_run_timer", () => {
    if (queue.length === 0) return false;
    queue.sort((a, b) => a.at - b.at || a.id - b.id);
    const t = queue.shift();
    const wait = t.at - Date.now();
    if (wait > 0) native.sleep(wait);
    t.f(...t.args);
    return true;
  });

  // ---- dispatch --------------------------------------------------------------------------
  const modules = () => globalThis.__kiln_modules || {};
  const MAX_RESULT_JSON = 16 * 1024 * 1024 + 1024;
  const MAX_RESULT_BYTES = 16 * 1024 * 1024;
  const kindOf = (fn) => (fn.isQuery ? "Query" : fn.isMutation ? "Mutation" : fn.isAction ? "Action" : fn.isHttp ? "HttpAction" : null);

  function fail(code, message, data) {
    return "1" + JSON.stringify(data === undefined ? { code, message } : { code, message, data });
  }

  const wrongKind = (name, actual) =>
    fail("WrongFunctionKind", `Trying to execute ${native.path()} as ${name}, but it is defined as ${actual}.`);

  function describe(e) {
    if (e !== null && typeof e === "object" && (e.ConvexErrorSymbol === Symbol.for("ConvexError") || Symbol.for("ConvexError") in e)) {
      let data = e.data;
      if (typeof data === "string") {
        try {
          data = JSON.parse(data);
        } catch {}
      }
      return fail("ConvexError", `Uncaught ConvexError: ${e.message}`, data === undefined ? null : data);
    }
    if (e instanceof Error) {
      const head = `Uncaught ${e.name}: ${e.message}`;
      const stack = typeof e.stack === "string" && e.stack.trim() ? `\n${e.stack.replace(/\s+$/, "")}` : "";
      return fail("UncaughtException", head + stack);
    }
    return fail("UncaughtException", `Uncaught ${inspect(e, 1, [])}`);
  }

  // A failure: a handler's own (handed over by `invokeDirect`) first goes through the
  // package's `invokeFunction`, which rejects at once with the error the package reports;
  // the runtime drives that promise and comes back here.
  function failed(e) {
    httpCall = 0;
    if (direct) {
      direct = false;
      return invokeThrowing(() => {
        throw e;
      }, null, []);
    }
    return describe(e);
  }

  // The dispatcher answers a failure envelope at once, or a promise: the package's promise of
  // the result's JSON, or a handler's own (see `invokeDirect`). The runtime drives it itself
  // (an `async` dispatcher awaiting it would cost every call another frame and another
  // await) and hands its outcome to `__kiln_settled` or `__kiln_failed`, which answer an
  // envelope or another promise to drive.
  // `fn` is what the module of `path` exports under its name, if a function (the runtime
  // finds it: the modules' exports are known once the app is loaded). `kind` is the runtime's
  // number for the call's kind, and the call's path only where a message needs it
  // (`native.path()`): a string made from Rust costs ~700 fuel. `requestId` comes with
  // actions only.
  const KIND_NAMES = ["query", "mutation", "action", "http-action"];
  // An HTTP action's progress: 1 while its handler's `Response` is awaited, 2 while the
  // response's body is read (see `__kiln_settled`).
  let httpCall = 0;
  const HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"];
  // An HTTP action: the request routed by the app's `http.js` router (its route path is the
  // call's path), as the package's `HttpRouter.runRequest` routes it.
  function dispatchHttp() {
    const router = modules().http?.default;
    if (!router || typeof router.lookup !== "function") {
      return fail("NoHttpRouter", "the app has no HTTP router (convex/http.ts exporting httpRouter() by default)");
    }
    const [method, url, headers, body] = native.httpRequest();
    const route = native.path();
    httpCall = 1;
    const match = HTTP_METHODS.includes(method) ? router.lookup(route, method) : null;
    if (!match) return resolved(new Response(`No HttpAction routed for ${route}`, { status: 404 }));
    const request = new Request(url, {
      method,
      headers,
      body: method === "GET" || method === "HEAD" || body.byteLength === 0 ? undefined : body,
    });
    return match[0].invokeHttpAction(request);
  }

  define("__kiln_dispatch", function dispatch(kind, fn, requestId) {
    try {
      if (kind === 3) return dispatchHttp();
      let m, ctx;
      const actual = fn ? kindOf(fn) : null;
      if (!actual) return fail("FunctionNotFound", `Could not find function for '${native.path()}'`);
      switch (kind) {
        case 0:
          if (!fn.isQuery) return wrongKind("Query", actual);
          m = fn[MADE];
          if (m !== undefined && m.kind === 0 && m.invoker === fn.invokeQuery) {
            ctx = m.internal ? contexts.query.internal : contexts.query.public;
          }
          // Only the package's own (edited) invoker understands the marker; a replaced one
          // gets the arguments' JSON, as the package would give it.
          if (ctx === undefined) {
            return fn.invokeQuery(directArgs.query && m?.invoker === fn.invokeQuery ? DIRECT_ARGS : native.argsJson());
          }
          break;
        case 1:
          if (!fn.isMutation) return wrongKind("Mutation", actual);
          m = fn[MADE];
          if (m !== undefined && m.kind === 1 && m.invoker === fn.invokeMutation) {
            ctx = m.internal ? contexts.mutation.internal : contexts.mutation.public;
          }
          if (ctx === undefined) {
            return fn.invokeMutation(directArgs.mutation && m?.invoker === fn.invokeMutation ? DIRECT_ARGS : native.argsJson());
          }
          break;
        case 2:
          if (!fn.isAction) return wrongKind("Action", actual);
          return fn.invokeAction(requestId, native.argsJson());
        default:
          return fail("UnsupportedCall", `Calls of kind ${KIND_NAMES[kind] ?? kind} are not supported by this runtime`);
      }
      // A query or mutation its package factory made, whose invoker is still that one (see
      // `made`): what the edited invoker would do, done here.
      let args = native.args();
      if (args === undefined) args = decodeJson(JSON.parse(native.argsJson()));
      return invokeDirect(m.handler, ctx, args, pkg.validateReturnValue, pkg.convexToJson, pkg.invokeFunction);
    } catch (e) {
      return failed(e);
    }
  });

  define("__kiln_settled", function settled(result) {
    if (httpCall === 1) {
      if (!(result instanceof Response)) {
        httpCall = 0;
        return fail("InvalidHttpResponse", `the HTTP action for ${native.path()} returned ${inspect(result, 1, [])}, not a Response`);
      }
      httpCall = 2;
      const response = result;
      return response.arrayBuffer().then((body) => ({ status: response.status, headers: [...response.headers], body }));
    }
    if (httpCall === 2) {
      httpCall = 0;
      try {
        const size = native.result(result);
        if (size === undefined || size > MAX_RESULT_BYTES) {
          return fail("HttpResponseTooLarge", `the response of the HTTP action for ${native.path()} is over the limit of 16 MiB`);
        }
        return "2";
      } catch (e) {
        return describe(e);
      }
    }
    if (direct) {
      direct = false;
      try {
        // (It refuses query objects: two `instanceof` checks, which no primitive passes.)
        if (result !== null && typeof result === "object") validateResult(result);
        if (result === void 0) result = null;
        // The runtime takes the value itself unless the package's `convexToJson` must decide.
        const size = native.result(result);
        if (size !== undefined) {
          if (size > MAX_RESULT_BYTES) {
            return fail("ResultTooLarge", `${native.path()} returned ${size} bytes, over the limit of 16 MiB`);
          }
          return "2";
        }
        result = JSON.stringify(resultToJson(result));
      } catch (e) {
        return describe(e);
      }
    }
    // Refuse an oversized result here: copying it out would cost memory the call may not
    // have. The host checks the exact size again.
    if (result.length > MAX_RESULT_JSON) {
      return fail("ResultTooLarge", `${native.path()} returned ${result.length} bytes of JSON, over the limit of 16 MiB`);
    }
    return "0" + result;
  });

  define("__kiln_failed", failed);

  define("__kiln_analyze", function analyze() {
    const functions = [];
    const mods = modules();
    for (const modName of Object.keys(mods).sort()) {
      const mod = mods[modName];
      for (const name of Object.keys(mod).sort()) {
        const fn = mod[name];
        if (typeof fn !== "function") continue;
        const kind = fn.isQuery ? "query" : fn.isMutation ? "mutation" : fn.isAction ? "action" : fn.isHttp ? "http-action" : null;
        if (!kind) continue;
        const parse = (f) => {
          if (typeof f !== "function") return null;
          const s = f();
          return s === "null" || s === undefined ? null : s;
        };
        functions.push({
          path: `${modName}:${name}`,
          kind,
          visibility: fn.isPublic ? "public" : "internal",
          args: parse(fn.exportArgs),
          returns: parse(fn.exportReturns),
        });
      }
    }
    const special = (name) => (mods[name] && mods[name].default) || null;
    const schema = special("schema");
    const crons = special("crons");
    const router = special("http");
    // `auth.config.ts` is a module with a dot in its name: no function module can take it.
    const auth = special("auth.config");
    const routesOf = (router) => router && typeof router.getRoutes === "function" ? router.getRoutes().map(([path, method]) => ({ path, method })) : [];
    const exported = (o) => o && typeof o.export === "function" ? o.export() : null;
    const parsed = (text) => typeof text === "string" ? JSON.parse(text) : text;
    // `convex.config.ts`: the app's definition and every component definition it uses, each
    // with what its own folder declares (its modules are `@<id>/<module>`).
    const config = mods["convex.config"];
    const components = config ? JSON.stringify({
      app: config.default.export(),
      definitions: config.definitions.map(([id, path, definition]) => ({
        id,
        path,
        definition: definition.export(),
        schema: parsed(exported(special(`@${id}/schema`))),
        crons: parsed(exported(special(`@${id}/crons`))),
        httpRoutes: routesOf(special(`@${id}/http`)),
      })),
    }) : null;
    return JSON.stringify({
      functions,
      schema: exported(schema),
      crons: exported(crons),
      httpRoutes: routesOf(router),
      auth: auth ? JSON.stringify(auth) : null,
      components,
    });
  });

  // ---- built-ins materialized in the snapshot ---------------------------------------------
  // QuickJS creates a built-in method or namespace object (`JSON`, `JSON.parse`,
  // `Promise.resolve`, ...) the first time it is read. Every call starts from the snapshot, so
  // a built-in first read in a call was created again in every call; reading the descriptors
  // of the common ones here makes them part of the snapshot.
  const builtins = [
    globalThis, Object, Object.prototype, Function.prototype, Array, Array.prototype,
    String, String.prototype, Number, Number.prototype, BigInt, BigInt.prototype,
    Boolean.prototype, Symbol, Symbol.prototype, Promise, Promise.prototype, Map.prototype,
    Set.prototype, WeakMap.prototype, WeakSet.prototype, Error, Error.prototype, JSON, Math,
    Reflect, ArrayBuffer, ArrayBuffer.prototype, Uint8Array, Uint8Array.prototype,
    Object.getPrototypeOf(Uint8Array.prototype), DataView.prototype, Date, Date.prototype,
    RegExp.prototype, TextEncoder.prototype, TextDecoder.prototype,
  ];
  for (const o of builtins) for (const key of Reflect.ownKeys(o)) Object.getOwnPropertyDescriptor(o, key);
})();
