// The React test page (test/page) bundled with esbuild into test-dist/page, which the test
// server serves at /page/.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(pkg, "test-dist", "page");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(pkg, "test", "page", "app.tsx")],
  bundle: true,
  format: "esm",
  outfile: join(out, "app.js"),
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  minify: true,
  sourcemap: true,
  logLevel: "warning",
});
copyFileSync(join(pkg, "test", "page", "index.html"), join(out, "index.html"));
console.log(`built ${out}`);
