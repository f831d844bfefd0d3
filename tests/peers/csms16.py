#!/usr/bin/env python3
"""An OCPP 1.6J central system (CSMS) for end-to-end tests.

Written independently of evos's Rust code, from the OCPP 1.6 edition 2
specification, OCPP-J 1.6, the Security Whitepaper edition 2 (security
profiles 1-3) and the mobilityhouse `ocpp` package (its v16 ChargePoint
class routes CALLs and validates every payload against the official JSON
schemas) over `websockets`, both pinned in tests/requirements.txt.

Command line:

    --host 127.0.0.1  --port 0 (any free port)
    --cert PEM --key PEM       serve wss:// with this identity (profiles 2, 3)
    --client-ca PEM            require a client certificate issued by this CA
                               whose CN is the station id (profile 3)
    --password PW              require HTTP Basic auth, user = station id
                               (profiles 1, 2); 401 otherwise
    --boot S1,S2,...           BootNotification answers in turn (the last
                               repeats): Accepted, Pending, Rejected
    --interval N               heartbeat interval in an Accepted answer (300)
    --retry N                  interval in a Pending/Rejected answer (1)
    --accept TAG[:PARENT][=STATUS],...   known id tags (STATUS: Accepted by
                               default); any other tag is Invalid
    --first-tx N               first transactionId handed out (1), then +1
    --response-timeout S       how long `call` waits for the station (15)
    --raw-timeout S            how long `raw` waits for an answer (10)

Once listening it prints `LISTENING <port>`. Stdout is line-based and only
carries, in order:

    EVENT {"action", "payload", "id", "t", "error", "reply"}
          one station -> CSMS CALL, printed once it is answered (or once it
          was received, for an action under `noreply`). `t` is the arrival
          time (Unix seconds, float); `error` is null or why the payload
          failed the official JSON schema (the library answered it with a
          CALLERROR then); `reply` is the answer sent (null when none).
    CONNECT {"station", "subprotocol", "user", "cn", "tls"}
    DISCONNECT {"station", "code"}
    REFUSED {"station", "reason"}     an opening handshake turned down
    OK <json> / ERR <reason>          the answer to one stdin command

Commands on stdin, one per line, each answered by one OK/ERR line:

    call ACTION JSON   send a CSMS -> station CALL (through the library, so
                       the request and the answer are schema-validated):
                       OK {"result": PAYLOAD}, or OK {"error": CODE,
                       "description": ..., "details": ...} for a CALLERROR,
                       or OK {"invalid": WHY, "result": PAYLOAD} when the
                       station's answer fails the schema
    raw TEXT           send TEXT as one frame as it is (bypassing the
                       library); OK {"reply": FRAME} with the station's
                       answer (CALLRESULT/CALLERROR with TEXT's unique id, or
                       the next one when TEXT has no readable id), or
                       OK {"reply": null, "closed": BOOL} when none came
    rawsend TEXT       send TEXT, wait for nothing
    stray              OK [FRAMES]: CALLRESULT/CALLERRORs the station sent
                       that answered nothing we asked (then cleared)
    offline            drop the connection (no close handshake) and turn
                       every new opening handshake down (HTTP 503)
    online             accept connections again
    close              close the connection with a normal close handshake
    events             OK [EVENTS]: every EVENT so far
    set KEY VALUE      boot S1,S2 | interval N | retry N | accept LIST |
                       password PW (empty: none) | txid N |
                       datatransfer STATUS[,DATA] | noreply ACTION,... (empty: none)
    quit               OK, then exit

Tolerated library quirks: it answers an unknown action with NotSupported
and a known but unhandled one with NotImplemented (the spec has it the other
way round), spells FormationViolation as FormatViolation, and ignores a frame
that is not JSON. This peer only receives from the station, so none of that
affects the tests; the `call` and `raw` answers are reported as sent.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime
import decimal
import http
import json
import ssl
import sys
import time
import uuid

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, _validate_payload
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_authorization_basic


def out(kind: str, value=None) -> None:
    """One stdout line; all output goes through here (one asyncio thread)."""
    if value is None:
        sys.stdout.write(kind + "\n")
    else:
        sys.stdout.write(kind + " " + json.dumps(value, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o):
    if isinstance(o, decimal.Decimal):
        return float(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def log(*args) -> None:
    print("csms16:", *args, file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_tags(text: str) -> dict:
    """TAG[:PARENT][=STATUS],... -> {tag: (status, parent)}."""
    tags = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        status = "Accepted"
        if "=" in item:
            item, status = item.split("=", 1)
        parent = None
        if ":" in item:
            item, parent = item.split(":", 1)
        tags[item] = (status, parent or None)
    return tags


class Closed(Exception):
    """The WebSocket under a Link closed."""


class State:
    def __init__(self, args):
        self.boot = [s for s in args.boot.split(",") if s]
        self.boots = 0
        self.interval = args.interval
        self.retry = args.retry
        self.tags = parse_tags(args.accept)
        self.password = args.password
        self.next_tx = args.first_tx
        self.data_transfer = ("Accepted", None)
        self.noreply: set[str] = set()
        self.offline = False
        self.events: list[dict] = []
        self.stray: list[str] = []
        self.link: Link | None = None
        self.cp: Csms16 | None = None
        self.response_timeout = args.response_timeout
        self.raw_timeout = args.raw_timeout
        self.client_ca = args.client_ca is not None

    def id_tag_info(self, tag: str) -> dict:
        status, parent = self.tags.get(tag, ("Invalid", None))
        info = {"status": status}
        if parent:
            info["parentIdTag"] = parent
        return info

    def set(self, key: str, value: str) -> None:
        if key == "boot":
            self.boot = [s for s in value.split(",") if s]
            self.boots = 0
        elif key == "interval":
            self.interval = int(value)
        elif key == "retry":
            self.retry = int(value)
        elif key == "accept":
            self.tags = parse_tags(value)
        elif key == "password":
            self.password = value or None
        elif key == "txid":
            self.next_tx = int(value)
        elif key == "datatransfer":
            status, _, data = value.partition(",")
            self.data_transfer = (status, data or None)
        elif key == "noreply":
            self.noreply = {s for s in value.split(",") if s}
        else:
            raise ValueError(f"unknown key {key!r}")


class Link:
    """The connection under the library: frames from the station go to the
    library, except answers that a `raw` command or our own `call` waits for
    (and strays, which are kept for `stray`)."""

    def __init__(self, ws, state: State):
        self.ws = ws
        self.state = state
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.waiters: dict[str, asyncio.Future] = {}
        self.any_waiter: asyncio.Future | None = None
        # Unique ids of CALLs the library sent for `call`, and their answers.
        self.lib_pending: set[str] = set()
        self.answers: dict[str, list] = {}
        self.closed = False

    async def pump(self) -> None:
        try:
            async for text in self.ws:
                self.route(text)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            for fut in list(self.waiters.values()) + [self.any_waiter]:
                if fut is not None and not fut.done():
                    fut.set_result(None)
            self.inbox.put_nowait(None)

    def route(self, text) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, TypeError):
            msg = None
        if isinstance(msg, list) and len(msg) >= 2 and msg[0] in (3, 4):
            uid = msg[1]
            fut = self.waiters.pop(uid, None) if isinstance(uid, str) else None
            if fut is not None and not fut.done():
                fut.set_result(text)
                return
            if isinstance(uid, str) and uid in self.lib_pending:
                self.answers[uid] = msg
                self.inbox.put_nowait(text)
                return
            if self.any_waiter is not None and not self.any_waiter.done():
                self.any_waiter.set_result(text)
                self.any_waiter = None
                return
            log("stray answer:", text)
            self.state.stray.append(text)
            return
        self.inbox.put_nowait(text)

    # The two methods the library uses.
    async def recv(self):
        text = await self.inbox.get()
        if text is None:
            raise Closed()
        return text

    async def send(self, text) -> None:
        await self.ws.send(text)


class Csms16(ChargePoint):
    """The library's 1.6 ChargePoint with a handler for every station ->
    CSMS message (OCPP 1.6 §4, Security Whitepaper §4-5 for the extension
    messages)."""

    def __init__(self, station: str, link: Link, state: State):
        super().__init__(station, link, response_timeout=state.response_timeout)
        self.state = state
        self.reply = None

    async def _handle_call(self, msg):
        event = {
            "action": msg.action,
            "payload": copy.deepcopy(msg.payload),
            "id": msg.unique_id,
            "t": time.time(),
            "error": None,
            "reply": None,
        }
        try:
            _validate_payload(Call(msg.unique_id, msg.action, copy.deepcopy(msg.payload)), "1.6")
        except Exception as e:  # noqa: BLE001 - any failure is reported
            event["error"] = f"{type(e).__name__}: {getattr(e, 'description', '')} {getattr(e, 'details', e)}"
        if msg.action in self.state.noreply:
            self.state.events.append(event)
            out("EVENT", event)
            return None
        self.reply = None
        try:
            return await super()._handle_call(msg)
        finally:
            event["reply"] = self.reply
            self.state.events.append(event)
            out("EVENT", event)

    def _answer(self, payload: dict, result):
        self.reply = payload
        return result

    @on(Action.boot_notification)
    def on_boot(self, **_):
        seq = self.state.boot or ["Accepted"]
        status = seq[min(self.state.boots, len(seq) - 1)]
        self.state.boots += 1
        interval = self.state.interval if status == "Accepted" else self.state.retry
        now = now_iso()
        return self._answer(
            {"status": status, "currentTime": now, "interval": interval},
            call_result.BootNotification(current_time=now, interval=interval, status=status),
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **_):
        now = now_iso()
        return self._answer({"currentTime": now}, call_result.Heartbeat(current_time=now))

    @on(Action.authorize)
    def on_authorize(self, id_tag, **_):
        info = self.state.id_tag_info(id_tag)
        return self._answer({"idTagInfo": info}, call_result.Authorize(id_tag_info=info))

    @on(Action.start_transaction)
    def on_start_transaction(self, id_tag, **_):
        tx = self.state.next_tx
        self.state.next_tx += 1
        info = self.state.id_tag_info(id_tag)
        return self._answer(
            {"transactionId": tx, "idTagInfo": info},
            call_result.StartTransaction(transaction_id=tx, id_tag_info=info),
        )

    @on(Action.stop_transaction)
    def on_stop_transaction(self, id_tag=None, **_):
        if id_tag is None:
            return self._answer({}, call_result.StopTransaction())
        info = self.state.id_tag_info(id_tag)
        return self._answer({"idTagInfo": info}, call_result.StopTransaction(id_tag_info=info))

    @on(Action.meter_values)
    def on_meter_values(self, **_):
        return self._answer({}, call_result.MeterValues())

    @on(Action.status_notification)
    def on_status_notification(self, **_):
        return self._answer({}, call_result.StatusNotification())

    @on(Action.data_transfer)
    def on_data_transfer(self, **_):
        status, data = self.state.data_transfer
        answer = {"status": status} if data is None else {"status": status, "data": data}
        return self._answer(answer, call_result.DataTransfer(status=status, data=data))

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_):
        return self._answer({}, call_result.DiagnosticsStatusNotification())

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_):
        return self._answer({}, call_result.FirmwareStatusNotification())

    @on(Action.security_event_notification)
    def on_security_event(self, **_):
        return self._answer({}, call_result.SecurityEventNotification())

    @on(Action.log_status_notification)
    def on_log_status(self, **_):
        return self._answer({}, call_result.LogStatusNotification())

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware_status(self, **_):
        return self._answer({}, call_result.SignedFirmwareStatusNotification())

    @on(Action.sign_certificate)
    def on_sign_certificate(self, **_):
        return self._answer({"status": "Rejected"}, call_result.SignCertificate(status="Rejected"))


def station_of(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def peer_cn(connection) -> str | None:
    ssl_object = connection.transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def make_process_request(state: State):
    def refuse(connection, station, status, reason):
        out("REFUSED", {"station": station, "reason": reason})
        response = connection.respond(status, reason + "\n")
        if status == http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="csms16"'
        return response

    def process_request(connection, request):
        station = station_of(request.path)
        if state.offline:
            return refuse(connection, station, http.HTTPStatus.SERVICE_UNAVAILABLE, "offline")
        connection.evos_user = None
        if state.password is not None:
            try:
                user, password = parse_authorization_basic(request.headers["Authorization"])
            except (KeyError, InvalidHeader):
                return refuse(connection, station, http.HTTPStatus.UNAUTHORIZED, "no basic auth")
            # Security Whitepaper §2.3: the user name is the station identity.
            if user != station or password != state.password:
                return refuse(connection, station, http.HTTPStatus.UNAUTHORIZED, "bad credentials")
            connection.evos_user = user
        connection.evos_cn = peer_cn(connection)
        if state.client_ca and connection.evos_cn != station:
            # Security Whitepaper §2.4 (profile 3): the certificate names the station.
            return refuse(connection, station, http.HTTPStatus.FORBIDDEN, "client certificate CN mismatch")
        return None

    return process_request


async def handler(ws, state: State) -> None:
    station = station_of(ws.request.path)
    if ws.subprotocol != "ocpp1.6":
        out("REFUSED", {"station": station, "reason": f"subprotocol {ws.subprotocol!r}"})
        await ws.close(1002, "ocpp1.6 required")
        return
    if state.link is not None:
        # A station reconnects while we still hold its old connection: that
        # one is dead to it.
        state.link.ws.transport.abort()
    link = Link(ws, state)
    cp = Csms16(station, link, state)
    state.link, state.cp = link, cp
    out(
        "CONNECT",
        {
            "station": station,
            "subprotocol": ws.subprotocol,
            "user": getattr(ws, "evos_user", None),
            "cn": getattr(ws, "evos_cn", None),
            "tls": ws.transport.get_extra_info("ssl_object") is not None,
        },
    )
    pump = asyncio.create_task(link.pump())
    try:
        await cp.start()
    except Closed:
        pass
    finally:
        pump.cancel()
        if state.link is link:
            state.link, state.cp = None, None
        out("DISCONNECT", {"station": station, "code": ws.close_code})


async def do_call(state: State, action: str, payload: dict) -> dict:
    cp, link = state.cp, state.link
    if cp is None or link is None:
        raise RuntimeError("no station connected")
    cls = getattr(call, action, None)
    if cls is None:
        raise RuntimeError(f"the library has no 1.6 CALL {action!r} (use raw)")
    request = cls(**camel_to_snake_case(payload))
    uid = str(uuid.uuid4())
    link.lib_pending.add(uid)
    try:
        await cp.call(request, suppress=False, unique_id=uid)
        return {"result": link.answers[uid][2]}
    except OCPPError as e:
        answer = link.answers.get(uid)
        if answer is None:
            raise RuntimeError(f"{type(e).__name__} before any answer: {e}") from e
        if answer[0] == 4:
            return {"error": answer[2], "description": answer[3], "details": answer[4] if len(answer) > 4 else None}
        return {"invalid": f"{type(e).__name__}: {e.description} {e.details}", "result": answer[2]}
    except asyncio.TimeoutError as e:
        raise RuntimeError("no answer from the station in time") from e
    finally:
        link.lib_pending.discard(uid)
        link.answers.pop(uid, None)


async def do_raw(state: State, text: str) -> dict:
    link = state.link
    if link is None:
        raise RuntimeError("no station connected")
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    uid = None
    try:
        frame = json.loads(text)
        if isinstance(frame, list) and len(frame) >= 2 and isinstance(frame[1], str):
            uid = frame[1]
    except ValueError:
        pass
    if uid is not None:
        link.waiters[uid] = fut
    else:
        link.any_waiter = fut
    await link.ws.send(text)
    try:
        reply = await asyncio.wait_for(fut, state.raw_timeout)
    except asyncio.TimeoutError:
        reply = None
    finally:
        if uid is not None:
            link.waiters.pop(uid, None)
        elif link.any_waiter is fut:
            link.any_waiter = None
    return {"reply": reply, "closed": link.closed}


async def command(state: State, line: str) -> str | None:
    """Run one command; returns the JSON text after OK (None for a bare OK)."""
    verb, _, rest = line.partition(" ")
    if verb == "call":
        action, _, payload = rest.partition(" ")
        result = await do_call(state, action, json.loads(payload) if payload.strip() else {})
        return json.dumps(result, default=_json_default)
    if verb == "raw":
        return json.dumps(await do_raw(state, rest))
    if verb == "rawsend":
        if state.link is None:
            raise RuntimeError("no station connected")
        await state.link.ws.send(rest)
        return None
    if verb == "stray":
        stray, state.stray = state.stray, []
        return json.dumps(stray)
    if verb == "offline":
        state.offline = True
        if state.link is not None:
            state.link.ws.transport.abort()
        return None
    if verb == "online":
        state.offline = False
        return None
    if verb == "close":
        if state.link is not None:
            await state.link.ws.close()
        return None
    if verb == "events":
        return json.dumps(state.events, default=_json_default)
    if verb == "set":
        key, _, value = rest.partition(" ")
        state.set(key, value)
        return None
    raise RuntimeError(f"unknown command {verb!r}")


async def control(state: State) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line.strip():
            continue
        if line.strip() == "quit":
            out("OK")
            return
        try:
            answer = await command(state, line)
        except Exception as e:  # noqa: BLE001 - every failure is an ERR line
            out("ERR " + f"{type(e).__name__}: {e}".replace("\n", " "))
            continue
        out("OK" if answer is None else "OK " + answer)


def tls_context(args) -> ssl.SSLContext | None:
    if not args.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Security Whitepaper §2.2: TLS 1.2 or above.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.client_ca)
    return ctx


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca")
    p.add_argument("--password")
    p.add_argument("--boot", default="Accepted")
    p.add_argument("--interval", type=int, default=300)
    p.add_argument("--retry", type=int, default=1)
    p.add_argument("--accept", default="")
    p.add_argument("--first-tx", type=int, default=1)
    p.add_argument("--response-timeout", type=float, default=15.0)
    p.add_argument("--raw-timeout", type=float, default=10.0)
    args = p.parse_args()
    if args.client_ca and not args.cert:
        p.error("--client-ca needs --cert and --key")
    state = State(args)
    async with serve(
        lambda ws: handler(ws, state),
        args.host,
        args.port,
        subprotocols=["ocpp1.6"],
        # A station offering no ocpp1.6 gets through the handshake and is
        # turned away by `handler` with a REFUSED line the test can see.
        select_subprotocol=lambda _conn, offered: "ocpp1.6" if "ocpp1.6" in offered else None,
        process_request=make_process_request(state),
        ssl=tls_context(args),
        # Room for the hostile tests' large frames in both directions.
        max_size=4 * 2**20,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        out(f"LISTENING {port}")
        await control(state)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
