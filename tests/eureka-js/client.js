// An eureka-js-client provider and consumer, driven line by line by
// tests/tests/e2e/eureka.rs: it registers (renewing every second, a 3 s lease,
// fetching deltas every second), then answers commands on stdin:
//
//   discover APP   print the UP instances of APP as the client sees them (JSON)
//   stop           stop the client (it cancels)
'use strict';

const path = require('path');
const readline = require('readline');

const { Eureka } = require(path.join(process.env.NODE_MODULES, 'eureka-js-client'));

const [host, port, app, instanceId, instancePort] = process.argv.slice(2);
const client = new Eureka({
  shouldUseDelta: true,
  logger: { debug() {}, info() {}, warn() {}, error: (...a) => console.error(...a) },
  instance: {
    app,
    instanceId,
    hostName: `${instanceId}.test`,
    ipAddr: '10.6.0.1',
    port: { $: Number(instancePort), '@enabled': true },
    vipAddress: app.toLowerCase(),
    statusPageUrl: `http://10.6.0.1:${instancePort}/info`,
    dataCenterInfo: { '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo', name: 'MyOwn' },
    leaseInfo: { renewalIntervalInSecs: 1, durationInSecs: 3 },
    metadata: { version: '3.1' },
  },
  eureka: { host, port: Number(port), servicePath: '/eureka/v2/apps/', heartbeatInterval: 1000, registryFetchInterval: 1000, maxRetries: 0 },
});

client.start((error) => {
  if (error) {
    console.error(`start failed: ${error}`);
    process.exit(1);
  }
  console.log('registered');
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, arg] = line.trim().split(/\s+/);
  if (command === 'discover') {
    const ups = client.getInstancesByAppId(arg.toUpperCase()).map((i) => `${i.ipAddr}:${i.port.$}`).sort();
    console.log(JSON.stringify(ups));
  } else if (command === 'stop') {
    client.stop(() => console.log('stopped'));
  }
});
