// The tus peer of filestore's benchmark suite (bench/targets.py starts it):
// @tus/server with @tus/file-store, uploads kept under DIR, on 127.0.0.1.
//
//     node server.js PORT DIR
//
// It prints "listening" once the port is bound, the line the suite waits for.
'use strict';

const { Server } = require('@tus/server');
const { FileStore } = require('@tus/file-store');

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error('usage: node server.js PORT DIR');
  process.exit(2);
}

const server = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
  // Locations relative to the request, so no host name is guessed.
  relativeLocation: true,
});

const http = server.listen({ host: '127.0.0.1', port: Number(port) }, () => {
  console.log('listening', JSON.stringify(http.address()));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => http.close(() => process.exit(0)));
}
