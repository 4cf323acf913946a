// Validates glTF/GLB files with the Khronos glTF validator (npm package gltf-validator) and prints one JSON
// report per file: node gltf_validate.js NODE_MODULES_DIR FILE...
const fs = require("fs");
const path = require("path");
const validator = require(path.join(process.argv[2], "gltf-validator"));
(async () => {
  for (const file of process.argv.slice(3)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)));
    console.log(JSON.stringify({file, issues: report.issues, info: report.info}));
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
