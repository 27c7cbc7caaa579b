import { action } from "./_generated/server";
import { v } from "convex/values";

// crypto.subtle's RSA and ECDSA signatures, checked against Node's own implementation by
// tests/crypto.test.mjs.

const algorithm = (name: string, hash?: string, curve?: string) =>
  name === "ECDSA" ? { name, namedCurve: curve } : { name, hash };
const params = (name: string, hash?: string, saltLength?: number) =>
  name === "ECDSA" ? { name, hash } : name === "RSA-PSS" ? { name, saltLength } : { name };
const key = (k: unknown) => (k instanceof ArrayBuffer ? k : (k as JsonWebKey));

const args = {
  name: v.string(),
  hash: v.optional(v.string()),
  curve: v.optional(v.string()),
  saltLength: v.optional(v.number()),
  format: v.string(),
  key: v.any(),
  data: v.string(),
};

export const verify = action({
  args: { ...args, signature: v.bytes() },
  handler: async (_ctx, a) => {
    const k = await crypto.subtle.importKey(a.format as any, key(a.key) as any, algorithm(a.name, a.hash, a.curve), false, ["verify"]);
    return await crypto.subtle.verify(params(a.name, a.hash, a.saltLength), k, a.signature, new TextEncoder().encode(a.data));
  },
});

export const sign = action({
  args,
  handler: async (_ctx, a) => {
    const k = await crypto.subtle.importKey(a.format as any, key(a.key) as any, algorithm(a.name, a.hash, a.curve), false, ["sign"]);
    return await crypto.subtle.sign(params(a.name, a.hash, a.saltLength), k, new TextEncoder().encode(a.data));
  },
});

/** A fresh ECDSA key pair: signs `data`, answers the signature and the public key as JWK and SPKI. */
export const generated = action({
  args: { curve: v.string(), hash: v.string(), data: v.string() },
  handler: async (_ctx, { curve, hash, data }) => {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: curve }, false, ["sign", "verify"]);
    const signature = await crypto.subtle.sign({ name: "ECDSA", hash }, pair.privateKey, new TextEncoder().encode(data));
    return {
      signature,
      jwk: await crypto.subtle.exportKey("jwk", pair.publicKey),
      spki: await crypto.subtle.exportKey("spki", pair.publicKey),
    };
  },
});

/** What importing a malformed key or signing with a public key answers. */
export const refusals = action({
  args: { spki: v.bytes() },
  handler: async (_ctx, { spki }) => {
    const refused = async (f: () => Promise<unknown>) => {
      try {
        await f();
        return "accepted";
      } catch (e) {
        return `${(e as Error).name}`;
      }
    };
    const rsa = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    return {
      garbage: await refused(() => crypto.subtle.importKey("spki", new Uint8Array([1, 2, 3]), rsa, false, ["verify"])),
      wrongUsage: await refused(() => crypto.subtle.importKey("spki", spki, rsa, false, ["sign"])),
      otherCurve: await refused(() => crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-521" }, false, ["verify"])),
      rsaGenerate: await refused(() => crypto.subtle.generateKey({ ...rsa, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, false, ["sign"])),
    };
  },
});
