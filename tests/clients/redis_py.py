"""redis-py at its default settings against the wspush control port.

Usage: redis_py.py HOST PORT [PASSWORD]. Prints one JSON object with what each call
returned; tests/redis_clients.rs checks it and what the WebSocket clients received.
"""
import json
import sys

import redis

host, port = sys.argv[1], int(sys.argv[2])
password = sys.argv[3] if len(sys.argv) > 3 else None
out = {"version": redis.__version__}

r = redis.Redis(host=host, port=port, password=password)  # defaults otherwise
out["ping"] = r.ping()
out["publish"] = r.publish("lib", "py-1")
pipe = r.pipeline(transaction=False)
for i in range(2, 6):
    pipe.publish("lib", f"py-{i}")
out["pipelined"] = pipe.execute()
out["send"] = r.execute_command("SEND", "libuser", "py-send")
info = r.info()
out["info_has_clients"] = "connected_clients" in info
out["info_reactors"] = info.get("reactors")
try:
    r.execute_command("PUBLISH", "only-one-argument")
    out["error"] = None
except redis.exceptions.ResponseError as e:
    out["error"] = f"ResponseError: {e}"
out["client_id"] = r.client_id()
r.client_setname("lib-test")
out["client_name"] = r.client_getname()
r.close()

if password is not None:
    bad = redis.Redis(host=host, port=port, password="wrong")
    try:
        bad.ping()
        out["bad_password"] = None
    except redis.exceptions.AuthenticationError as e:
        out["bad_password"] = f"AuthenticationError: {e}"
    except redis.exceptions.ResponseError as e:
        out["bad_password"] = f"ResponseError: {e}"
print(json.dumps(out))
