"""A stand-in for a utility's encryption-machine bridge: JSON lines on stdin/stdout,
computed with the software module's test keys.  ``error``, ``hang`` or ``die`` as the
first argument make it misbehave."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from drivers.security import TEST_MASTER_KEY, MeterIdentity, SoftModule
from protocols.dlt645 import AuthAnswer, AuthChallenge


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    soft = SoftModule(TEST_MASTER_KEY)
    for line in sys.stdin:
        req = json.loads(line)
        if mode == "die":
            sys.exit(3)
        if mode == "hang":
            time.sleep(30)
        out: dict[str, object] = {"id": req["id"]}
        if mode == "error":
            out["error"] = "card not inserted"
        else:
            ident = MeterIdentity(req["meter"], req["address"], req.get("customer") or "0")
            if req["op"] == "authenticate":
                c = asyncio.run(soft.authenticate(ident))
                out.update(ciphertext=c.ciphertext.hex(), random=c.random.hex(),
                           factor=c.factor.hex())
            else:
                ch = req["challenge"]
                challenge = AuthChallenge(bytes.fromhex(ch["ciphertext"]),
                                          bytes.fromhex(ch["random"]),
                                          bytes.fromhex(ch["factor"]))
                an = req["answer"]
                answer = AuthAnswer(bytes.fromhex(an["random"]),
                                    bytes.fromhex(an["esam_serial"]))
                if req["op"] == "topup":
                    out["payload"] = asyncio.run(soft.protect_topup(
                        ident, challenge, answer, req["amount_fen"], req["count"])).hex()
                else:
                    out["ciphertext"] = asyncio.run(soft.protect_relay(
                        ident, challenge, answer, bytes.fromhex(req["plain"]))).hex()
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
