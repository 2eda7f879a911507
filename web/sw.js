// The service worker of the web build: after the first visit the page works with no network.
// web/build.sh writes the site's files and a version made from their contents into the two
// marked lines. Installing caches every file under that version; activating deletes the caches
// of older versions, so an update (a new build, hence a new sw.js) replaces them all at once.
// Requests are answered from the cache, and anything not in it from the network.

const VERSION = "dev"; // version: written by web/build.sh
const FILES = []; // files: written by web/build.sh
const CACHE = `advmoe-lab-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(["./", ...FILES]))
      .then(() => self.skipWaiting())
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) =>
        Promise.all(keys.filter((k) => k.startsWith("advmoe-lab-") && k !== CACHE).map((k) => caches.delete(k)))
      )
      .then(() => self.clients.claim())
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => (await cache.match(request, { ignoreSearch: true })) ?? fetch(request))
  );
});
