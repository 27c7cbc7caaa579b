// The Node + SQLite peer: better-sqlite3 in WAL mode with synchronous=FULL (every commit
// durable), one process, as a small hand-written server would be.
// Usage: node sqlite-server.mjs <database file> <accounts> <initial balance>
import Database from "better-sqlite3";
import { serve } from "./http-peer.mjs";

const [file, accounts, balance] = process.argv.slice(2);
const db = new Database(file);
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
db.exec(`CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
         CREATE INDEX by_owner ON accounts (owner);`);
const open = db.prepare("INSERT INTO accounts (owner, balance) VALUES (?, ?)");
db.transaction(() => {
  for (let i = 0; i < Number(accounts); i++) open.run(`owner-${i}`, Number(balance));
})();

const balanceOf = db.prepare("SELECT balance FROM accounts WHERE id = ?").pluck();
const setBalance = db.prepare("UPDATE accounts SET balance = ? WHERE id = ?");
const ofOwner = db.prepare("SELECT id, owner, balance FROM accounts WHERE owner = ? LIMIT 1");
const total = db.prepare("SELECT sum(balance) FROM accounts").pluck();

/** Reads two accounts, moves `amount`, writes both, in one immediate transaction. */
const transfer = db.transaction((from, to, amount) => {
  const source = balanceOf.get(from);
  const target = balanceOf.get(to);
  if (source === undefined || target === undefined) throw new Error("NO_SUCH_ACCOUNT");
  if (!(amount > 0) || source < amount) throw new Error("INSUFFICIENT_FUNDS");
  setBalance.run(source - amount, from);
  setBalance.run(target + amount, to);
  return source - amount;
});

serve({
  "/transfer": ({ from, to, amount }) => transfer.immediate(from, to, amount),
  "/owner": ({ owner }) => ofOwner.get(owner) ?? null,
  "/total": () => total.get(),
});
