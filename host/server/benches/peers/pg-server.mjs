// The Node + PostgreSQL peer: `pg` with a connection pool; a transfer locks both rows with
// SELECT ... FOR UPDATE (in id order, so transfers never deadlock) and commits durably.
// Usage: node pg-server.mjs <postgres url> <accounts> <initial balance>
import pg from "pg";
import { serve } from "./http-peer.mjs";

const [url, accounts, balance] = process.argv.slice(2);
// BIGINT comes back as a JavaScript number (balances stay far below 2^53).
pg.types.setTypeParser(20, Number);
const pool = new pg.Pool({ connectionString: url, max: 20 });
await pool.query(`CREATE TABLE accounts (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL);
                  CREATE INDEX by_owner ON accounts (owner);`);
await pool.query(
  "INSERT INTO accounts (owner, balance) SELECT 'owner-' || (i - 1), $2 FROM generate_series(1, $1) AS i",
  [Number(accounts), Number(balance)],
);
await pool.query("ANALYZE accounts");

async function transfer({ from, to, amount }) {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const { rows } = await client.query(
      "SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
      [[from, to]],
    );
    const source = rows.find((r) => r.id === from);
    const target = rows.find((r) => r.id === to);
    if (source === undefined || target === undefined) throw new Error("NO_SUCH_ACCOUNT");
    if (!(amount > 0) || source.balance < amount) throw new Error("INSUFFICIENT_FUNDS");
    await client.query("UPDATE accounts SET balance = $1 WHERE id = $2", [source.balance - amount, from]);
    await client.query("UPDATE accounts SET balance = $1 WHERE id = $2", [target.balance + amount, to]);
    await client.query("COMMIT");
    return source.balance - amount;
  } catch (e) {
    await client.query("ROLLBACK");
    throw e;
  } finally {
    client.release();
  }
}

serve({
  "/transfer": transfer,
  "/owner": async ({ owner }) =>
    (await pool.query("SELECT id, owner, balance FROM accounts WHERE owner = $1 LIMIT 1", [owner])).rows[0] ?? null,
  "/total": async () => (await pool.query("SELECT sum(balance)::bigint AS total FROM accounts")).rows[0].total,
});
