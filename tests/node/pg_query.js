// Connect with node-postgres (config as JSON in argv[2]), run argv[3], print {"rows": ..., "ssl": bool} or {"error": ...}.
'use strict';
const fs = require('fs');
const { Client } = require('pg');

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  if (cfg.ssl && typeof cfg.ssl === 'object') {
    for (const k of ['ca', 'cert', 'key']) {
      if (cfg.ssl[k]) cfg.ssl[k] = fs.readFileSync(cfg.ssl[k], 'utf8');
    }
  }
  const client = new Client(cfg);
  try {
    await client.connect();
    const res = await client.query(process.argv[3]);
    const ssl = !!(client.connection && client.connection.stream && client.connection.stream.encrypted);
    console.log(JSON.stringify({ rows: res.rows, ssl }));
    await client.end();
  } catch (err) {
    console.log(JSON.stringify({ error: String(err.message || err), code: err.code || null }));
    process.exitCode = 1;
  }
}
main();
