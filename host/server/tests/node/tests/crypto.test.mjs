// crypto.subtle's RSA (PKCS #1 v1.5, PSS) and ECDSA (P-256, P-384) against Node's own
// implementation: Node signs, Kiln verifies (tampered data refused), Kiln signs, Node
// verifies; keys from SPKI, PKCS #8, JWK and raw points; a key pair generated in Kiln.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { constants, createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { ConvexHttpClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import { deploy, startServer, testApp } from "./helpers.mjs";

let server;
let http;

before(async () => {
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
  http = new ConvexHttpClient(server.url, { logger: false });
});

after(async () => {
  await server?.stop();
});

const buf = (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
const nodeHash = (h) => h.replace("-", "").toLowerCase();
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = { "P-256": generateKeyPairSync("ec", { namedCurve: "P-256" }), "P-384": generateKeyPairSync("ec", { namedCurve: "P-384" }) };

const cases = [
  { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", pair: rsa, opts: {} },
  { name: "RSASSA-PKCS1-v1_5", hash: "SHA-512", pair: rsa, opts: {} },
  { name: "RSA-PSS", hash: "SHA-256", saltLength: 32, pair: rsa, opts: { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } },
  { name: "ECDSA", hash: "SHA-256", curve: "P-256", pair: ec["P-256"], opts: { dsaEncoding: "ieee-p1363" } },
  { name: "ECDSA", hash: "SHA-384", curve: "P-384", pair: ec["P-384"], opts: { dsaEncoding: "ieee-p1363" } },
  { name: "ECDSA", hash: "SHA-512", curve: "P-256", pair: ec["P-256"], opts: { dsaEncoding: "ieee-p1363" } },
];

test("signatures made by Node verify in Kiln, from SPKI and from JWK; tampered data does not", async () => {
  for (const c of cases) {
    const data = `payload for ${c.name} ${c.hash}`;
    const signature = buf(sign(nodeHash(c.hash), Buffer.from(data), { key: c.pair.privateKey, ...c.opts }));
    const what = { name: c.name, hash: c.hash, curve: c.curve, saltLength: c.saltLength };
    const spki = buf(c.pair.publicKey.export({ type: "spki", format: "der" }));
    const jwk = c.pair.publicKey.export({ format: "jwk" });
    for (const [format, key] of [["spki", spki], ["jwk", jwk]]) {
      const ok = await http.action(api.signatures.verify, { ...what, format, key, data, signature });
      assert.equal(ok, true, `${c.name} ${c.hash} ${format}`);
      const tampered = await http.action(api.signatures.verify, { ...what, format, key, data: `${data}!`, signature });
      assert.equal(tampered, false, `${c.name} ${c.hash} ${format}: tampered`);
    }
    if (c.curve) {
      const raw = buf(rawPoint(c.pair.publicKey));
      assert.equal(await http.action(api.signatures.verify, { ...what, format: "raw", key: raw, data, signature }), true);
    }
  }
});

/** An EC public key's uncompressed point (0x04 || x || y). */
function rawPoint(publicKey) {
  const { x, y } = publicKey.export({ format: "jwk" });
  return Buffer.concat([Buffer.from([4]), Buffer.from(x, "base64url"), Buffer.from(y, "base64url")]);
}

test("signatures made by Kiln from PKCS #8 and JWK private keys verify in Node", async () => {
  for (const c of cases) {
    const data = `signed in kiln: ${c.name} ${c.hash}`;
    const what = { name: c.name, hash: c.hash, curve: c.curve, saltLength: c.saltLength };
    const pkcs8 = buf(c.pair.privateKey.export({ type: "pkcs8", format: "der" }));
    const jwk = c.pair.privateKey.export({ format: "jwk" });
    for (const [format, key] of [["pkcs8", pkcs8], ["jwk", jwk]]) {
      const signature = await http.action(api.signatures.sign, { ...what, format, key, data });
      const ok = verify(nodeHash(c.hash), Buffer.from(data), { key: c.pair.publicKey, ...c.opts }, Buffer.from(signature));
      assert.equal(ok, true, `${c.name} ${c.hash} ${format}`);
    }
  }
});

test("an ECDSA key pair generated in Kiln: Node verifies its signature with the exported JWK and SPKI", async () => {
  for (const [curve, hash] of [["P-256", "SHA-256"], ["P-384", "SHA-384"]]) {
    const data = `generated ${curve}`;
    const out = await http.action(api.signatures.generated, { curve, hash, data });
    assert.equal(out.jwk.kty, "EC");
    assert.equal(out.jwk.crv, curve);
    assert.equal(out.jwk.alg, curve === "P-256" ? "ES256" : "ES384");
    const fromJwk = createPublicKey({ key: out.jwk, format: "jwk" });
    const fromSpki = createPublicKey({ key: Buffer.from(out.spki), format: "der", type: "spki" });
    for (const key of [fromJwk, fromSpki]) {
      assert.ok(verify(nodeHash(hash), Buffer.from(data), { key, dsaEncoding: "ieee-p1363" }, Buffer.from(out.signature)));
    }
  }
});

test("malformed keys, wrong usages, unsupported curves and RSA key generation are refused with Web Crypto's errors", async () => {
  const spki = buf(rsa.publicKey.export({ type: "spki", format: "der" }));
  assert.deepEqual(await http.action(api.signatures.refusals, { spki }), {
    garbage: "DataError",
    wrongUsage: "SyntaxError",
    otherCurve: "NotSupportedError",
    rsaGenerate: "NotSupportedError",
  });
});
