// Parses and validates an AsyncAPI document with the AsyncAPI project's own
// parser: the spec's JSON Schema, its rules (Spectral) and every $ref. Then
// checks each message's examples (records the Rust encoder produced) against
// the message's payload and headers schemas, which the parser does not.
// Exits 1 on any error, and on warnings too: a contract people copy should
// be clean.
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const file = process.argv[2];
if (!file) {
  console.error('usage: node asyncapi.mjs <asyncapi.json>');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(file, 'utf8'));
// Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
const problems = diagnostics.filter((d) => d.severity <= 1);
for (const d of diagnostics) {
  const level = ['error', 'warning', 'info', 'hint'][d.severity];
  console.log(`${level}: ${d.code}: ${d.message} at ${d.path.join('.') || '(root)'}`);
}
if (!document || problems.length > 0) {
  console.error(`${file}: ${problems.length} error(s) or warning(s)`);
  process.exit(1);
}
const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
// schemars writes Rust's u64 as format uint64, which Ajv does not know.
ajv.addFormat('uint64', { type: 'number', validate: (n) => Number.isInteger(n) && n >= 0 });
let invalid = 0;
let checked = 0;
for (const message of document.messages().all()) {
  for (const example of message.examples().all()) {
    for (const [part, schema, value] of [
      ['payload', message.payload()?.json(), example.payload()],
      ['headers', message.headers()?.json(), example.headers()],
    ]) {
      if (!schema || value === undefined) continue;
      checked += 1;
      if (!ajv.validate(schema, value)) {
        invalid += 1;
        console.error(`${message.name()}: example ${part}: ${ajv.errorsText(ajv.errors)}`);
      }
    }
  }
}
if (invalid > 0 || checked === 0) {
  console.error(`${file}: ${invalid} of ${checked} example parts do not match their schemas`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.messages().all().map((m) => m.name());
console.log(`${file}: valid AsyncAPI ${document.version()}, ${checked} example parts match their schemas: channels ${channels.join(', ')}; messages ${messages.join(', ')}`);
