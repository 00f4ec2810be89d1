"""The FastAPI + redis-py service the module replaces, as a benchmark peer.

The original model: one key per user, `SET presence:user:<id> 1 EX <ttl>`
per heartbeat; the listing SCANs the keyspace and sorts.  Same HTTP API and
JSON shapes as the module (README.md, "HTTP API"), room fixed to "global".

The heartbeat's "online" count is DBSIZE, pipelined with the SET in one
round trip: generous to this peer (each peer has a Redis of its own, so
DBSIZE is exactly the presence keys; a shared Redis would need a SCAN).

Run by bench/run:
  PRESENCE_REDIS_PORT=6379 PRESENCE_TTL=60 /usr/bin/python3 -m uvicorn \
      --app-dir bench/peers fastapi_app:app --workers 1 --loop uvloop \
      --http httptools --no-access-log
"""

import os

import redis.asyncio as aioredis
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

PREFIX = "presence:user:"
ROOM = "global"
TTL = int(os.environ.get("PRESENCE_TTL", "10"))
LIMIT = 1000

# redis-py picks the hiredis parser by itself when python3-hiredis is there
redis = aioredis.Redis(
    host=os.environ.get("PRESENCE_REDIS_HOST", "127.0.0.1"),
    port=int(os.environ.get("PRESENCE_REDIS_PORT", "6379")),
    decode_responses=True,
    socket_timeout=1.0,
)

app = FastAPI()


class Heartbeat(BaseModel):
    user_id: str


def error(status, code, message):
    return JSONResponse({"error": code, "message": message}, status_code=status)


def valid_id(s):
    return (0 < len(s.encode()) <= 128
            and not any(ord(c) < 0x20 or ord(c) == 0x7f for c in s))


@app.post("/api/heartbeat")
async def heartbeat(hb: Heartbeat):
    if not valid_id(hb.user_id):
        return error(400, "invalid_user_id", "The user id is not valid.")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(PREFIX + hb.user_id, 1, ex=TTL)
        pipe.dbsize()
        _, online = await pipe.execute()
    return {"user_id": hb.user_id, "room": ROOM, "ttl": TTL, "online": online}


@app.get("/api/online")
async def online(limit: int = Query(LIMIT, ge=0), user_id: str = None):
    if user_id is not None:
        ms = await redis.pttl(PREFIX + user_id)
        return {"user_id": user_id, "online": ms > 0,
                "expires_in_ms": max(ms, 0)}
    users = set()
    async for key in redis.scan_iter(match=PREFIX + "*", count=1000):
        users.add(key[len(PREFIX):])
    users = sorted(users)  # code point order == UTF-8 byte order
    return {"room": ROOM, "ttl": TTL, "count": len(users),
            "users": users[:min(limit, LIMIT)]}
