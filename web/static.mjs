// A static file server for the built page: `node web/static.mjs DIR [PORT]` serves DIR on
// 127.0.0.1 (web/serve.sh: target/web/dist on port 8080); web/e2e/run.mjs imports `serve`.
// Only files inside DIR are served; anything else is a 404, logged to stderr.

import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".wasm": "application/wasm",
  ".css": "text/css",
  ".json": "application/json",
  ".png": "image/png",
};

async function isFile(file) {
  try {
    return (await stat(file)).isFile();
  } catch {
    return false;
  }
}

/** Serves `dir` on 127.0.0.1:`port` (0: any free port); resolves to the listening server. */
export function serve(dir, port = 0) {
  const root = path.resolve(dir);
  const server = createServer(async (req, res) => {
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const file = path.join(root, pathname.endsWith("/") ? pathname + "index.html" : path.normalize(pathname));
    if (!file.startsWith(root + path.sep) || !(await isFile(file))) {
      console.error(`404: ${pathname}`);
      res.writeHead(404).end();
      return;
    }
    const body = await readFile(file);
    // The length lets the page count the module's download against its size.
    res.writeHead(200, {
      "content-type": types[path.extname(file)] ?? "application/octet-stream",
      "content-length": body.length,
    });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [dir, port = "8080"] = process.argv.slice(2);
  if (!dir || !(await isFile(path.join(dir, "index.html")))) {
    console.error(`usage: node web/static.mjs DIR [PORT]; ${dir ?? "DIR"} has no index.html (run web/build.sh)`);
    process.exit(1);
  }
  const server = await serve(dir, Number(port));
  console.log(`serving ${dir} at http://127.0.0.1:${server.address().port}/ (Ctrl-C stops)`);
}
