#!/usr/bin/env python3
"""An Eastron SDM630 (Modbus V2) on Modbus TCP, for end-to-end tests.

Written independently of evos's Rust code: the register words are computed
here from the Eastron "SDM630 Modbus Protocol" input-register table with
struct.pack('>f', ...) -- IEEE 754 float32, bytes big-endian, high word at
the lower address. Served by pymodbus 3.x (asyncio), pinned in
tests/requirements.txt.

Input registers (FC 04), float32, two registers each:

    0x0000/02/04  voltage L1/L2/L3          V
    0x0006/08/0A  current L1/L2/L3          A   (= phase power / voltage)
    0x000C/0E/10  active power L1/L2/L3     W   (= total power / 3)
    0x0034        total system power        W
    0x0046        frequency                 Hz
    0x0048        import active energy      kWh
    0x004A        export active energy      kWh

The rest of 0x0000..0x01FF reads as 0 (float 0.0), so any read range within
the table is answered, as the meter does. Holding registers (FC 03/06/16)
0x0000..0x00FF read 0 and accept writes (each write is logged on stderr).

With --ocmf TEXT (or --ocmf-address) the meter also serves TEXT as ASCII in
holding registers from --ocmf-address (default 0x1000) for --ocmf-length
registers (default 500, i.e. up to 1000 characters): two characters per
register, the first in the high byte, NUL padded to the end of the area.
The area is read-only (a write gets exception 0x02); placed below 0x0100
it takes the place of those writable registers.

A request for another unit id than --unit is answered with exception 0x0B
(gateway target device failed to respond), as a TCP gateway does.

Command line:

    --host 127.0.0.1  --port 502 (0: any free port)  --unit 1 (1..247)
    --energy-kwh 0  --export-kwh 0  --power-w 0  --voltage-v 230  --frequency-hz 50
    --mode normal|timeout|exception|garbage
    --advance [FACTOR]   energy follows power over time, FACTOR x real time
                         (default: static; --advance alone means 1.0)
    --ocmf TEXT  --ocmf-address N  --ocmf-length N   (N: decimal or 0x hex)
    --ignore-stdin-eof   keep running when stdin closes (default: stop)
    --verbose            pymodbus debug log on stderr

Once listening it prints `LISTENING <port>` on stdout (flushed). Stdout
carries only that line and the answers to commands; logs go to stderr.

Control channel: one command per line on stdin, each answered by one line on
stdout, `OK` (`OK <data>` for queries) or `ERR <reason>`:

    energy KWH            import energy register, kWh
    export KWH            export energy register, kWh
    power W               total power (split evenly over the three phases)
    voltage V [V2 V3]     phase voltages (one value: all three)
    frequency HZ
    mode normal|timeout|exception|garbage
    advance FACTOR        0 stops energy from following power
    ocmf TEXT             replace the OCMF text (the rest of the line; empty
                          clears); needs --ocmf or --ocmf-address at start
    get                   OK energy_kwh=… export_kwh=… power_w=… voltage_v=a,b,c
                             frequency_hz=… mode=… advance=…
    holding ADDR          OK <word>: a holding register's current value (in
                          any mode; ADDR decimal or 0x hex)
    quit                  OK, then exit

Modes (applied to every request from then on, also on open connections):

    normal     answers as the meter does
    timeout    accepts connections and requests, never answers
    exception  answers every request with exception 0x04 (server device failure)
    garbage    answers every request with bytes that are no valid Modbus TCP
               response: a complete MBAP frame by its length field (so a
               client reading by length is not left waiting) with protocol
               identifier 0xFFFF (must be 0) and function code 0xFF.
               pymodbus's trace_packet hook swaps the encoded response for
               these bytes, so no second server is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import sys
import threading
import time

from pymodbus import pymodbus_apply_logging_config
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

MODES = ("normal", "timeout", "exception", "garbage")

# transaction id, protocol id 0xFFFF, length 3, unit 0xFF, function 0xFF, 0xFF
GARBAGE = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x03, 0xFF, 0xFF, 0xFF])

INPUT_REGISTERS = 0x0200
HOLDING_REGISTERS = 0x0100

# SDM630 input registers (float32).
VOLTAGE = (0x0000, 0x0002, 0x0004)
CURRENT = (0x0006, 0x0008, 0x000A)
PHASE_POWER = (0x000C, 0x000E, 0x0010)
TOTAL_POWER = 0x0034
FREQUENCY = 0x0046
IMPORT_KWH = 0x0048
EXPORT_KWH = 0x004A

log = logging.getLogger("modbus_meter")


def float_words(value: float) -> tuple[int, int]:
    """float32, high word first, each word big-endian."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return high, low


def ascii_words(text: str, length: int) -> list[int]:
    """Two characters per register, the first in the high byte, NUL padded."""
    data = text.encode("ascii").ljust(2 * length, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, 2 * length, 2)]


def number(text: str) -> int:
    return int(text, 0)


class Meter:
    def __init__(self, args: argparse.Namespace):
        self.energy_kwh = args.energy_kwh
        self.export_kwh = args.export_kwh
        self.power_w = args.power_w
        self.voltage_v = [args.voltage_v] * 3
        self.frequency_hz = args.frequency_hz
        self.mode = args.mode
        self.advance = args.advance
        self.ocmf = args.ocmf or ""
        self.ocmf_address = args.ocmf_address
        self.ocmf_length = args.ocmf_length
        self.last = time.monotonic()
        self.querying = False  # the control channel reads the datastore

    def tick(self) -> None:
        """Let energy follow power for the time since the last tick."""
        now = time.monotonic()
        if self.advance:
            kwh = self.power_w * (now - self.last) * self.advance / 3_600_000.0
            if kwh >= 0:
                self.energy_kwh += kwh
            else:
                self.export_kwh -= kwh
        self.last = now

    def input_image(self) -> dict[int, int]:
        self.tick()
        image: dict[int, int] = {}

        def put(address: int, value: float) -> None:
            image[address], image[address + 1] = float_words(value)

        phase_power = self.power_w / 3.0
        for i in range(3):
            volts = self.voltage_v[i]
            put(VOLTAGE[i], volts)
            put(CURRENT[i], phase_power / volts if volts else 0.0)
            put(PHASE_POWER[i], phase_power)
        put(TOTAL_POWER, self.power_w)
        put(FREQUENCY, self.frequency_hz)
        put(IMPORT_KWH, self.energy_kwh)
        put(EXPORT_KWH, self.export_kwh)
        return image

    def check_ocmf(self, text: str) -> None:
        text.encode("ascii")
        if len(text) > 2 * self.ocmf_length:
            raise ValueError(
                f"OCMF text is {len(text)} characters; the area holds {2 * self.ocmf_length}"
            )

    def state(self) -> str:
        self.tick()
        volts = ",".join(f"{v:g}" for v in self.voltage_v)
        return (
            f"energy_kwh={self.energy_kwh:.6f} export_kwh={self.export_kwh:.6f} "
            f"power_w={self.power_w:g} voltage_v={volts} frequency_hz={self.frequency_hz:g} "
            f"mode={self.mode} advance={self.advance:g}"
        )


def holding_blocks(meter: Meter, with_ocmf: bool) -> list[SimData]:
    """Writable 0x0000..0x00FF, minus the OCMF area, plus the OCMF area."""
    blocks: list[SimData] = []
    start, end = 0, HOLDING_REGISTERS
    if with_ocmf:
        o_start, o_end = meter.ocmf_address, meter.ocmf_address + meter.ocmf_length
        if o_start > start:
            blocks.append(SimData(start, count=min(end, o_start) - start, datatype=DataType.REGISTERS))
        if o_end < end:
            blocks.append(SimData(o_end, count=end - o_end, datatype=DataType.REGISTERS))
        blocks.append(
            SimData(
                o_start,
                values=ascii_words(meter.ocmf, meter.ocmf_length),
                datatype=DataType.REGISTERS,
                readonly=True,
            )
        )
    else:
        blocks.append(SimData(start, count=end - start, datatype=DataType.REGISTERS))
    return blocks


def build_devices(meter: Meter, unit: int, with_ocmf: bool) -> list[SimDevice]:
    async def action(function_code, start_address, address, count, registers, set_values):
        # Called by pymodbus before it answers a request with a valid address
        # range; `registers` is the live block, modified in place.
        if meter.mode == "exception" and not meter.querying:
            return ExcCodes.DEVICE_FAILURE
        if function_code == 4:
            for reg, word in meter.input_image().items():
                registers[reg - start_address] = word
        elif function_code in (3, 6, 16, 22, 23):
            if with_ocmf:
                words = ascii_words(meter.ocmf, meter.ocmf_length)
                offset = meter.ocmf_address - start_address
                registers[offset : offset + len(words)] = words
            if set_values is not None:
                log.warning("WRITE unit %d 0x%04X %s", unit, address, list(set_values))
        return None

    async def other_unit(*_args):
        return ExcCodes.GATEWAY_NO_RESPONSE

    coils = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    inputs = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    meter_device = SimDevice(
        unit,
        simdata=(
            coils,
            inputs,
            holding_blocks(meter, with_ocmf),
            [SimData(0, count=INPUT_REGISTERS, datatype=DataType.REGISTERS)],
        ),
        action=action,
    )
    # id 0 catches every other unit id (pymodbus looks up the id, then 0).
    absent = SimDevice(
        0,
        simdata=[SimData(0, count=0x10000, datatype=DataType.REGISTERS)],
        action=other_unit,
    )
    return [meter_device, absent]


def answer(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def apply(meter: Meter, server: ModbusTcpServer, unit: int, line: str) -> str | None:
    """Apply one command; the text after OK, or raise ValueError."""
    word, _, rest = line.partition(" ")
    args = rest.split()
    if word == "energy":
        meter.tick()
        meter.energy_kwh = float(rest)
    elif word == "export":
        meter.tick()
        meter.export_kwh = float(rest)
    elif word == "power":
        meter.tick()
        meter.power_w = float(rest)
    elif word == "voltage":
        values = [float(a) for a in args]
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise ValueError("voltage takes one or three values")
        meter.voltage_v = values
    elif word == "frequency":
        meter.frequency_hz = float(rest)
    elif word == "mode":
        if rest.strip() not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        meter.mode = rest.strip()
    elif word == "advance":
        meter.tick()
        meter.advance = float(rest)
    elif word == "ocmf":
        if meter.ocmf_address is None:
            raise ValueError("start the meter with --ocmf to serve OCMF text")
        meter.check_ocmf(rest)
        meter.ocmf = rest
    elif word == "get":
        return meter.state()
    elif word == "holding":
        address = number(rest)
        meter.querying = True
        try:
            words = await server.context.async_getValues(unit, 3, address, 1)
        finally:
            meter.querying = False
        if not isinstance(words, list):
            raise ValueError(f"holding register 0x{address:04X}: exception {int(words)}")
        return str(words[0])
    else:
        raise ValueError(f"unknown command `{word}`")
    return None


def read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    # A daemon thread: works for pipes, ttys and files alike, and never keeps
    # the process alive.
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=502)
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--energy-kwh", type=float, default=0.0)
    parser.add_argument("--export-kwh", type=float, default=0.0)
    parser.add_argument("--power-w", type=float, default=0.0)
    parser.add_argument("--voltage-v", type=float, default=230.0)
    parser.add_argument("--frequency-hz", type=float, default=50.0)
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--advance", type=float, nargs="?", const=1.0, default=0.0)
    parser.add_argument("--ocmf", default=None)
    parser.add_argument("--ocmf-address", type=number, default=None)
    parser.add_argument("--ocmf-length", type=number, default=500)
    parser.add_argument("--ignore-stdin-eof", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.unit <= 247:
        parser.error("--unit must be within 1..=247")
    with_ocmf = args.ocmf is not None or args.ocmf_address is not None
    if with_ocmf and args.ocmf_address is None:
        args.ocmf_address = 0x1000
    if with_ocmf and not (
        args.ocmf_length > 0 and args.ocmf_address + args.ocmf_length <= 0x10000
    ):
        parser.error("--ocmf-address/--ocmf-length: the area must fit below 0x10000")

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="modbus_meter: %(message)s")
    pymodbus_apply_logging_config(logging.DEBUG if args.verbose else logging.WARNING)

    meter = Meter(args)
    if with_ocmf:
        try:
            meter.check_ocmf(meter.ocmf)
        except ValueError as e:
            parser.error(str(e))

    def trace_packet(sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if meter.mode == "timeout":
            return b""  # asyncio writes nothing
        if meter.mode == "garbage":
            return GARBAGE
        return data

    devices = build_devices(meter, args.unit, with_ocmf)
    server = ModbusTcpServer(
        devices,
        address=(args.host, args.port),
        trace_packet=trace_packet,
    )
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    meter.last = time.monotonic()  # with --advance, energy flows from now
    answer(f"LISTENING {port}")

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=read_stdin, args=(loop, queue), daemon=True).start()
    while True:
        line = await queue.get()
        if line is None:
            if args.ignore_stdin_eof:
                await server.serving
            break
        line = line.strip()
        if not line:
            continue
        if line == "quit":
            answer("OK")
            break
        try:
            data = await apply(meter, server, args.unit, line)
            answer("OK" if data is None else f"OK {data}")
        except (ValueError, UnicodeEncodeError) as e:
            answer(f"ERR {e}")
    await server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
