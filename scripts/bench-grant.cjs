// The Node peer of `scripts/bench`: Grant's AWS Lambda handler (npm `grant`)
// under the same stub Runtime API as the broker's binaries. A minimal
// runtime loop (what AWS's Node runtime does: poll /next, call the handler,
// post the response) with `node:http`, so the figures are Grant's and Node's,
// not a client library's. Grant answers its own authorize redirect from a
// signed cookie session: no storage at all, which is generous to it.
'use strict'
const http = require('node:http')

const grant = require('grant').aws({
  config: {
    defaults: { origin: 'https://broker.example.com', transport: 'session', state: true, prefix: '/connect' },
    demo: {
      authorize_url: 'https://provider.example.com/authorize',
      access_url: 'https://provider.example.com/token',
      oauth: 2,
      key: 'bench-client',
      secret: 'bench-client-secret',
      scope: ['openid', 'profile'],
      callback: '/done',
    },
  },
  session: { secret: 'bench-session-secret-0123456789' },
})

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(':')
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

function call (method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path, agent, headers: body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {} }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ res, body: Buffer.concat(chunks).toString() }))
    })
    req.on('error', reject)
    if (body) req.write(body)
    req.end()
  })
}

async function loop () {
  for (;;) {
    const { res, body } = await call('GET', '/2018-06-01/runtime/invocation/next')
    const id = res.headers['lambda-runtime-aws-request-id']
    const event = JSON.parse(body)
    const { redirect, response } = await grant(event)
    const out = redirect || { statusCode: 200, body: JSON.stringify(response || {}) }
    await call('POST', `/2018-06-01/runtime/invocation/${id}/response`, JSON.stringify(out))
  }
}

loop().catch(() => process.exit(1))
