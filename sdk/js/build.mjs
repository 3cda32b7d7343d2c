// How `weir build` makes a JavaScript stage into a component: bundle the
// project's stage.ts or stage.js with the SDK into one module (rolldown), the
// `weir:pipeline/*` imports left to the component, then componentize-js
// against the WIT. Run from the toolchain folder weir installs, so its
// imports resolve there:
//   node build.mjs PROJECT SDK_JS WIT OUT
import { rolldown } from "rolldown";
import { componentize } from "@bytecodealliance/componentize-js";
import { access, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [project, sdk, wit, out] = process.argv.slice(2).map((p) => resolve(p));
const scratch = await mkdtemp(join(tmpdir(), "weir-build-"));
try {
  // stage.ts (TypeScript: rolldown strips the types) or stage.js.
  const ts = join(project, "stage.ts");
  const stage = await access(ts).then(() => ts, () => join(project, "stage.js"));
  const entry = join(scratch, "entry.js");
  await writeFile(
    entry,
    `import ${JSON.stringify(stage)};\nexport { consumer } from ${JSON.stringify(join(sdk, "component.js"))};\n`,
  );
  const bundle = await rolldown({
    input: entry,
    external: [/^weir:/],
    resolve: { alias: { "weir/testing": join(sdk, "testing.js"), weir: join(sdk, "weir.js") } },
    logLevel: "warn",
  });
  const source = join(scratch, "stage.bundle.js");
  await bundle.write({ file: source, format: "esm" });
  await bundle.close();
  const { component } = await componentize({ sourcePath: source, witPath: wit, worldName: "stage", disableFeatures: ["http", "fetch-event"] });
  await writeFile(out, component);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
