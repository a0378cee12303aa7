"""Top-ups written into a simulated cost-control meter through its ESAM, over a real TCP
line: the software security module (test keys), a wrong key, a purchase the meter loses,
a repeat that must not credit twice, an encrypted relay command, and the external
program module."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.device import Line, MeterRef, TopupOrder
from drivers.dlt645_meter import Dlt645Meter
from drivers.meters import open_meter
from drivers.security import (
    TEST_MASTER_KEY,
    CommandModule,
    SecurityError,
    SoftModule,
    load_module,
)
from drivers.tcp import TcpBus
from protocols.dlt645 import (
    DI_AUTHENTICATE,
    DI_TOPUP,
    AbnormalReply,
    AuthChallenge,
    SecurityReply,
    SecurityRequest,
    TopupPayload,
    build_frame,
    decode_message,
    parse_frame,
    security_error_names,
)
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.esam import Esam

ADDRESS = "000000000042"
CUSTOMER = "000012345678"
BRIDGE = Path(__file__).parent / "data" / "esam_bridge.py"


@pytest.fixture
async def line() -> AsyncIterator[tuple[SimulatedMeter, Dlt645Meter]]:
    (sim,) = make_meters([ADDRESS])
    sim.esam = Esam(customer=CUSTOMER)
    server = BusServer([sim], baud=19200, td=0.002)
    async with server, TcpBus("127.0.0.1", server.port) as bus:
        meter = open_meter(Line(bus), MeterRef("M42", "dlt645-2007", ADDRESS))
        assert isinstance(meter, Dlt645Meter)
        yield sim, meter


def order(amount: str, count: int | None = None, customer: str = CUSTOMER) -> TopupOrder:
    return TopupOrder(int(Decimal(amount) * 100), count, customer, "receipt-1")


# ---- the frames -----------------------------------------------------------------------

def test_security_frames_round_trip_byte_exact() -> None:
    challenge = AuthChallenge(bytes(range(8)), bytes(range(8, 16)), bytes(2) + bytes(6))
    req = SecurityRequest(address=ADDRESS, di=DI_AUTHENTICATE, operator="0000A11C",
                          payload=challenge.payload())
    wire = build_frame(req.to_frame(), preamble=0)
    # 68 A0..A5 68 03 L | DI 070000FF | operator | 24 bytes, each +33H
    assert wire[:9] == bytes.fromhex("684200000000006803")
    assert wire[9] == 4 + 4 + 24
    assert wire[10:14] == bytes(((0xFF + 0x33) & 0xFF, 0x33, 0x33, 0x07 + 0x33))
    back = decode_message(parse_frame(wire))
    assert isinstance(back, SecurityRequest)
    assert (back.di, back.operator) == (DI_AUTHENTICATE, "0000A11C")
    assert AuthChallenge.parse(back.payload) == challenge
    reply = SecurityReply(address=ADDRESS, di=DI_TOPUP)
    wire = build_frame(reply.to_frame(), preamble=0)
    assert wire[8] == 0x83
    back = decode_message(parse_frame(wire))
    assert isinstance(back, SecurityReply) and back.di == DI_TOPUP and back.payload == b""
    topup = TopupPayload(5000, 3, bytes.fromhex(CUSTOMER), b"\x01\x02\x03\x04", b"\x05\x06\x07\x08")
    assert TopupPayload.parse(topup.payload()) == topup
    assert len(topup.payload()) == 22
    assert security_error_names(0b0010_0100) == ("esam_verification_failed",
                                                 "purchase_count_wrong")


# ---- through the device model ----------------------------------------------------------

async def test_a_top_up_is_written_and_confirmed_by_count_and_balance(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    assert meter.capabilities.topup
    count0, balance0 = sim.model.purchase_count, sim.model.remaining
    result = await meter.write_topup(order("50"), SoftModule(TEST_MASTER_KEY))
    assert result.status == "confirmed", result
    assert (result.count_before, result.count_after, result.count) == (count0, count0 + 1,
                                                                       count0 + 1)
    assert result.balance_before is not None and result.balance_after is not None
    assert result.balance_after == pytest.approx(result.balance_before + 50, abs=0.5)
    assert sim.model.purchase_count == count0 + 1
    assert float(sim.model.remaining) == pytest.approx(float(balance0) + 50, abs=0.5)
    assert sim.esam is not None and sim.esam.authentications == 1
    # The same purchase again (its count fixed by the first attempt): not sent, not
    # credited twice.
    again = await meter.write_topup(order("50", count=result.count),
                                    SoftModule(TEST_MASTER_KEY))
    assert again.status == "confirmed" and "already written" in again.detail
    assert sim.model.purchase_count == count0 + 1
    assert sim.esam.authentications == 1


async def test_a_wrong_key_is_refused_by_the_meter_and_nothing_is_credited(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    count0 = sim.model.purchase_count
    result = await meter.write_topup(order("50"), SoftModule(b"\x11" * 16))
    assert result.status == "refused"
    assert "authentication_failed" in result.detail
    assert sim.model.purchase_count == count0
    assert sim.audit[-1].action == "authenticate" and not sim.audit[-1].accepted


async def test_a_wrong_mac_is_refused(line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    """Authentication passes, the top-up's MAC does not (a module that spoils it)."""
    sim, meter = line

    class Spoiled(SoftModule):
        async def protect_topup(self, *args: object, **kw: object) -> bytes:
            good = await super().protect_topup(*args, **kw)  # type: ignore[arg-type]
            return good[:8] + bytes(4) + good[12:]

    count0 = sim.model.purchase_count
    result = await meter.write_topup(order("50"), Spoiled(TEST_MASTER_KEY))
    assert result.status == "refused" and "esam_verification_failed" in result.detail
    assert sim.model.purchase_count == count0
    assert sim.counters["topups_refused"] == 1


async def test_another_customer_number_is_refused(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    count0 = sim.model.purchase_count
    result = await meter.write_topup(order("50", customer="000099999999"),
                                     SoftModule(TEST_MASTER_KEY))
    assert result.status == "refused" and "customer_mismatch" in result.detail
    assert sim.model.purchase_count == count0


async def test_a_lost_purchase_is_unconfirmed_then_sent_again_with_the_same_count(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    assert sim.esam is not None
    sim.esam.lose_topups = 1
    count0, balance0 = sim.model.purchase_count, float(sim.model.remaining)
    module = SoftModule(TEST_MASTER_KEY)
    first = await meter.write_topup(order("30"), module)
    assert first.status == "unconfirmed" and first.count_after == count0
    assert first.count == count0 + 1
    second = await meter.write_topup(order("30", count=first.count), module)
    assert second.status == "confirmed" and second.count_after == count0 + 1
    assert float(sim.model.remaining) == pytest.approx(balance0 + 30, abs=0.5)  # once


async def test_a_purchase_written_by_someone_else_meanwhile_is_not_overwritten(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    count0 = sim.model.purchase_count
    sim.model.purchase(Decimal(10))  # the counter's own sale
    result = await meter.write_topup(order("30", count=count0 + 1),
                                     SoftModule(TEST_MASTER_KEY))
    # count0 + 1 is already used by that sale: ours would be count0 + 2, a new purchase
    assert result.status == "confirmed" and "already written" in result.detail
    assert sim.model.purchase_count == count0 + 1


async def test_an_encrypted_relay_command_through_the_module(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    import datetime as dt

    from drivers.device import Credentials
    sim, meter = line
    assert sim.esam is not None
    sim.esam.relay_needs_esam = True
    plan = meter.relay_plan("trip")
    expires = sim.model.now() + dt.timedelta(minutes=5)
    plain = Credentials("02000000", "0000A11C", expires)
    with pytest.raises(Exception, match="unauthorised"):
        await meter.relay(plan, plain)  # plain 1C: this ESAM wants ciphertext
    assert not sim.model.relay_open
    sealed = Credentials("02000000", "0000A11C", expires,
                         security=SoftModule(TEST_MASTER_KEY))
    await meter.relay(plan, sealed)
    assert sim.model.relay_open
    forged = Credentials("02000000", "0000A11C", expires, security=SoftModule(b"\x22" * 16))
    with pytest.raises(Exception, match="authentication_failed"):
        await meter.relay(meter.relay_plan("restore"), forged)


# ---- an external program ----------------------------------------------------------------

async def test_the_external_program_module_writes_a_top_up(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    module = load_module({"module": "command", "command": [sys.executable, str(BRIDGE)],
                          "timeout": 5})
    assert isinstance(module, CommandModule)
    try:
        count0 = sim.model.purchase_count
        result = await meter.write_topup(order("20"), module)
        assert result.status == "confirmed", result
        assert sim.model.purchase_count == count0 + 1
    finally:
        await module.close()


async def test_an_external_program_that_errs_hangs_or_dies_refuses_cleanly(
        line: tuple[SimulatedMeter, Dlt645Meter]) -> None:
    sim, meter = line
    count0 = sim.model.purchase_count
    for mode, expected in (("error", "refused authenticate: card not inserted"),
                           ("hang", "no answer to authenticate within 0.5 s"),
                           ("die", "it ended")):
        module = CommandModule([sys.executable, str(BRIDGE), mode], timeout=0.5)
        try:
            result = await meter.write_topup(order("20"), module)
        finally:
            await module.close()
        assert result.status == "refused" and expected in result.detail, (mode, result)
    assert sim.model.purchase_count == count0
    with pytest.raises(SecurityError):
        await CommandModule([sys.executable, str(BRIDGE), "die"], timeout=1).authenticate(
            meter_identity())


def meter_identity() -> object:
    from drivers.security import MeterIdentity
    return MeterIdentity("M42", ADDRESS, CUSTOMER)


def test_an_unknown_module_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not soft, command, nor an installed entry point"):
        load_module({"module": "hsm-9000"})


def test_the_abnormal_reply_carries_the_serr_bits() -> None:
    sim = make_meters([ADDRESS])[0]
    sim.esam = Esam()
    req = SecurityRequest(address=ADDRESS, di=DI_TOPUP, payload=bytes(22))
    reply = sim.handle(req.to_frame())
    assert reply is not None
    msg = decode_message(reply)
    assert isinstance(msg, AbnormalReply)
    assert security_error_names(msg.error) == ("esam_verification_failed",)  # no auth
