// Protocol-fidelity scenarios with node-postgres (issue 10): node fidelity.js SCENARIO CONFIG_JSON
// prints one JSON object with what the client saw, so a test can compare a direct connection
// with one through the proxy. Scenarios: login, params, notify, terminate, cancel.
'use strict';
const { Client } = require('pg');

function errInfo(err) {
  return { code: err.code || null, severity: err.severity || null, message: String(err.message || err) };
}

function until(predicate, ms) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = async () => {
      try {
        if (await predicate()) return resolve(true);
      } catch (e) {
        return reject(e);
      }
      if (Date.now() > deadline) return reject(new Error('timed out'));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function connect(cfg) {
  const c = new Client(cfg);
  const params = {};
  c.connection.on('parameterStatus', (m) => { params[m.parameterName] = m.parameterValue; });
  await c.connect();
  c.reported = params;
  return c;
}

const scenarios = {
  // SCRAM login (SASLprep of the password on the server side): who we are, or the error.
  async login(cfg) {
    const c = await connect(cfg);
    const r = await c.query('SELECT current_user AS u');
    await c.end();
    return { user: r.rows[0].u };
  },

  // ParameterStatus at login (startup options) and after SET client_encoding.
  async params(cfg) {
    const c = await connect(cfg);
    const atLogin = { ...c.reported };
    await c.query("SET client_encoding = 'latin1'");
    const afterSet = c.reported.client_encoding;
    await c.query("SET client_encoding = 'utf-8'");
    const afterUtf8 = c.reported.client_encoding;
    await c.end();
    return { atLogin, afterSet, afterUtf8 };
  },

  // A client's own notification carries the PID of its BackendKeyData.
  async notify(cfg) {
    const c = await connect(cfg);
    const got = [];
    c.on('notification', (m) => got.push({ channel: m.channel, payload: m.payload, pid: m.processId }));
    await c.query('LISTEN fid_node');
    await c.query("NOTIFY fid_node, 'mine'");
    await until(() => got.length >= 1, 10000);
    await c.end();
    return { processID: c.processID, notifications: got };
  },

  // pg_terminate_backend(the victim's PID), extended (a parameter) or simple (a literal).
  async terminate(cfg) {
    const victim = await connect(cfg);
    const killer = await connect(cfg);
    const errors = [];
    let ended = false;
    victim.on('error', (e) => errors.push(errInfo(e)));
    victim.on('end', () => { ended = true; });
    const sql = cfg.literal ? `SELECT pg_terminate_backend(${victim.processID}) AS t` : 'SELECT pg_terminate_backend($1) AS t';
    const r = await killer.query(sql, cfg.literal ? [] : [victim.processID]);
    await until(() => ended, 10000);
    await killer.end();
    return { result: r.rows[0].t, victimErrors: errors, ended };
  },

  // pg_cancel_backend(the victim's PID) while it runs pg_sleep: its query fails with 57014.
  async cancel(cfg) {
    const victim = await connect(cfg);
    const killer = await connect(cfg);
    const running = victim.query('SELECT pg_sleep(60) AS node_fid_sleep').then(() => null, (e) => errInfo(e));
    await until(async () => {
      const r = await killer.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%node_fid_sleep%' AND pid <> pg_backend_pid()");
      return r.rows[0].n > 0;
    }, 20000);
    const r = await killer.query('SELECT pg_cancel_backend($1) AS c', [victim.processID]);
    const victimError = await running;
    const after = await victim.query('SELECT 7 AS seven');
    await victim.end();
    await killer.end();
    return { result: r.rows[0].c, victimError, after: after.rows[0].seven };
  },
};

async function main() {
  const name = process.argv[2];
  const cfg = JSON.parse(process.argv[3]);
  try {
    console.log(JSON.stringify(await scenarios[name](cfg)));
  } catch (err) {
    console.log(JSON.stringify({ error: errInfo(err) }));
  }
}
main();
