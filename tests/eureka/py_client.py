"""A py-eureka-client provider and consumer, driven line by line by
tests/tests/e2e/eureka.rs: it registers (renewing every second, a 3 s lease),
then answers commands on stdin:

  discover APP   print the UP instances of APP as the client sees them (JSON)
  metadata APP   print the metadata of each instance of APP, by id (JSON)
  status VALUE   override its own status (PUT .../status?value=VALUE)
  clear-status   clear the override (DELETE .../status)
  stop           stop the client (it marks itself DOWN and cancels)
  silence        stop renewing without cancelling (the lease must expire)
"""
import json
import os
import sys

import py_eureka_client.eureka_client as eureka_client

url, app, instance_id, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = eureka_client.init(
    eureka_server=url,
    app_name=app,
    instance_id=instance_id,
    instance_host=f"{instance_id}.test",
    instance_ip="10.5.0.1",
    instance_port=port,
    renewal_interval_in_secs=1,
    duration_in_secs=3,
    metadata={"version": "2.0", "zone": "eu-1"},
)
print("registered", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "discover":
        found = client.applications.get_application(words[1].upper())
        ups = sorted(f"{i.ipAddr}:{i.port.port}" for i in found.up_instances) if found else []
        print(json.dumps(ups), flush=True)
    elif words[0] == "metadata":
        found = client.applications.get_application(words[1].upper())
        instances = found.instances if found else []
        print(json.dumps({i.instanceId: i.metadata for i in instances}), flush=True)
    elif words[0] == "status":
        eureka_client.get_event_loop().run_until_complete(client.status_update(words[1]))
        print("status sent", flush=True)
    elif words[0] == "clear-status":
        eureka_client.get_event_loop().run_until_complete(client.delete_status_override())
        print("clear sent", flush=True)
    elif words[0] == "stop":
        eureka_client.stop()
        print("stopped", flush=True)
    elif words[0] == "silence":
        # The heartbeat thread is a daemon: leaving without stop() stops
        # the renewals and never cancels.
        print("silent", flush=True)
        os._exit(0)
