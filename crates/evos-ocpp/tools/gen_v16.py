#!/usr/bin/env python3
"""Generate crates/evos-ocpp/src/v16/messages.rs from the official OCPP 1.6J
JSON schemas: OCPP 1.6 edition 2 and the Security Whitepaper edition 2.

From the workspace root:

    target/test-venv/bin/python crates/evos-ocpp/tools/gen_v16.py          # write it
    target/test-venv/bin/python crates/evos-ocpp/tools/gen_v16.py --check  # exit 1 if stale

The schemas come from the `ocpp` Python package (tests/requirements.txt pins
it) unless `--schemas DIR` names a directory of `<Action>.json` and
`<Action>Response.json` files. The output goes through `rustfmt`.

Every enum and object in the schemas needs a Rust name, from NAMES below:
(schema, JSON path) -> type name. The generator stops when a position has no
name, when a name is never used, or when one name would stand for two
different definitions; positions with the same name and the same definition
share one Rust type (IdTagInfo, ChargingProfile, MeterValue, ...).
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[3]
OUTPUT = ROOT / "crates" / "evos-ocpp" / "src" / "v16" / "messages.rs"

# Who sends each action's request. DataTransfer goes both ways.
CHARGE_POINT_INITIATED = [
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
]
CENTRAL_SYSTEM_INITIATED = [
    "CancelReservation",
    "CertificateSigned",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "DataTransfer",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetInstalledCertificateIds",
    "GetLocalListVersion",
    "GetLog",
    "InstallCertificate",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "SignedUpdateFirmware",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
]

# The Security Whitepaper's actions; all others are OCPP 1.6's.
WHITEPAPER = {
    "CertificateSigned",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetInstalledCertificateIds",
    "GetLog",
    "InstallCertificate",
    "LogStatusNotification",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
    "SignedUpdateFirmware",
}

ACTION_DOCS = {
    "Authorize": "The Charge Point asks whether an idTag may start or stop charging.",
    "BootNotification": "The Charge Point announces itself after booting; the answer says "
    "whether it is accepted and sets the heartbeat interval.",
    "CancelReservation": "The Central System cancels a reservation.",
    "CertificateSigned": "The Central System sends the certificate chain signed from the "
    "Charge Point's CSR.",
    "ChangeAvailability": "The Central System makes a connector (connector 0: the whole Charge "
    "Point) operative or inoperative.",
    "ChangeConfiguration": "The Central System sets a configuration key.",
    "ClearCache": "The Central System empties the Authorization Cache.",
    "ClearChargingProfile": "The Central System removes the charging profiles that match all "
    "the given criteria.",
    "DataTransfer": "Vendor-specific data, in either direction.",
    "DeleteCertificate": "The Central System deletes an installed root certificate.",
    "DiagnosticsStatusNotification": "The Charge Point reports the progress of a diagnostics "
    "upload.",
    "ExtendedTriggerMessage": "The Central System asks for a Charge Point-initiated message, "
    "the security ones included.",
    "FirmwareStatusNotification": "The Charge Point reports the progress of a firmware update.",
    "GetCompositeSchedule": "The Central System asks for the schedule that all charging "
    "profiles on a connector add up to.",
    "GetConfiguration": "The Central System reads configuration keys (all of them when none "
    "are named).",
    "GetDiagnostics": "The Central System asks for diagnostics to be uploaded to a location.",
    "GetInstalledCertificateIds": "The Central System lists the installed root certificates of "
    "one kind.",
    "GetLocalListVersion": "The Central System asks for the Local Authorization List's version.",
    "GetLog": "The Central System asks for a diagnostics or security log to be uploaded.",
    "Heartbeat": "The Charge Point shows it is alive; the answer carries the Central System's "
    "time.",
    "InstallCertificate": "The Central System installs a root certificate.",
    "LogStatusNotification": "The Charge Point reports the progress of a log upload (GetLog).",
    "MeterValues": "The Charge Point sends sampled meter values.",
    "RemoteStartTransaction": "The Central System asks for a transaction to be started for an "
    "idTag.",
    "RemoteStopTransaction": "The Central System asks for a transaction to be stopped.",
    "ReserveNow": "The Central System reserves a connector for an idTag until an expiry date.",
    "Reset": "The Central System asks for a soft or hard reset.",
    "SecurityEventNotification": "The Charge Point reports a security event.",
    "SendLocalList": "The Central System sends a full or differential Local Authorization List.",
    "SetChargingProfile": "The Central System installs a charging profile.",
    "SignCertificate": "The Charge Point sends a CSR for its own certificate to be signed.",
    "SignedFirmwareStatusNotification": "The Charge Point reports the progress of a signed "
    "firmware update.",
    "SignedUpdateFirmware": "The Central System asks for a signed firmware update.",
    "StartTransaction": "The Charge Point reports that a transaction started; the answer "
    "assigns its transactionId.",
    "StatusNotification": "The Charge Point reports a connector's status or an error.",
    "StopTransaction": "The Charge Point reports that a transaction ended, optionally with its "
    "meter values.",
    "TriggerMessage": "The Central System asks for a Charge Point-initiated message now.",
    "UnlockConnector": "The Central System asks for a connector to be unlocked.",
    "UpdateFirmware": "The Central System asks for firmware to be downloaded and installed.",
}

# (schema, JSON path) -> Rust type name, for every enum and object. A schema
# is `<Action>.req` or `<Action>.conf`; a path names properties from the
# message root, `[]` stepping into an array's items.
_IDTAGINFO = {"idTagInfo": "IdTagInfo", "idTagInfo.status": "AuthorizationStatus"}


def _profile(at):
    return {
        at: "ChargingProfile",
        f"{at}.chargingProfilePurpose": "ChargingProfilePurposeType",
        f"{at}.chargingProfileKind": "ChargingProfileKindType",
        f"{at}.recurrencyKind": "RecurrencyKindType",
        **_schedule(f"{at}.chargingSchedule"),
    }


def _schedule(at):
    return {
        at: "ChargingSchedule",
        f"{at}.chargingRateUnit": "ChargingRateUnitType",
        f"{at}.chargingSchedulePeriod[]": "ChargingSchedulePeriod",
    }


def _meter_value(at):
    sampled = f"{at}.sampledValue[]"
    return {
        at: "MeterValue",
        sampled: "SampledValue",
        f"{sampled}.context": "ReadingContext",
        f"{sampled}.format": "ValueFormat",
        f"{sampled}.measurand": "Measurand",
        f"{sampled}.phase": "Phase",
        f"{sampled}.location": "Location",
        f"{sampled}.unit": "UnitOfMeasure",
    }


NAMES = {
    "Authorize.conf": _IDTAGINFO,
    "BootNotification.conf": {"status": "RegistrationStatus"},
    "CancelReservation.conf": {"status": "CancelReservationStatus"},
    "CertificateSigned.conf": {"status": "CertificateSignedStatus"},
    "ChangeAvailability.req": {"type": "AvailabilityType"},
    "ChangeAvailability.conf": {"status": "AvailabilityStatus"},
    "ChangeConfiguration.conf": {"status": "ConfigurationStatus"},
    "ClearCache.conf": {"status": "ClearCacheStatus"},
    "ClearChargingProfile.req": {"chargingProfilePurpose": "ChargingProfilePurposeType"},
    "ClearChargingProfile.conf": {"status": "ClearChargingProfileStatus"},
    "DataTransfer.conf": {"status": "DataTransferStatus"},
    "DeleteCertificate.req": {
        "certificateHashData": "CertificateHashData",
        "certificateHashData.hashAlgorithm": "HashAlgorithm",
    },
    "DeleteCertificate.conf": {"status": "DeleteCertificateStatus"},
    "DiagnosticsStatusNotification.req": {"status": "DiagnosticsStatus"},
    "ExtendedTriggerMessage.req": {"requestedMessage": "ExtendedMessageTrigger"},
    "ExtendedTriggerMessage.conf": {"status": "TriggerMessageStatus"},
    "FirmwareStatusNotification.req": {"status": "FirmwareStatus"},
    "GetCompositeSchedule.req": {"chargingRateUnit": "ChargingRateUnitType"},
    "GetCompositeSchedule.conf": {
        "status": "GetCompositeScheduleStatus",
        **_schedule("chargingSchedule"),
    },
    "GetConfiguration.conf": {"configurationKey[]": "KeyValue"},
    "GetInstalledCertificateIds.req": {"certificateType": "CertificateUse"},
    "GetInstalledCertificateIds.conf": {
        "status": "GetInstalledCertificateStatus",
        "certificateHashData[]": "CertificateHashData",
        "certificateHashData[].hashAlgorithm": "HashAlgorithm",
    },
    "GetLog.req": {"log": "LogParameters", "logType": "LogType"},
    "GetLog.conf": {"status": "LogStatus"},
    "InstallCertificate.req": {"certificateType": "CertificateUse"},
    "InstallCertificate.conf": {"status": "InstallCertificateStatus"},
    "LogStatusNotification.req": {"status": "UploadLogStatus"},
    "MeterValues.req": _meter_value("meterValue[]"),
    "RemoteStartTransaction.req": _profile("chargingProfile"),
    "RemoteStartTransaction.conf": {"status": "RemoteStartStopStatus"},
    "RemoteStopTransaction.conf": {"status": "RemoteStartStopStatus"},
    "ReserveNow.conf": {"status": "ReservationStatus"},
    "Reset.req": {"type": "ResetType"},
    "Reset.conf": {"status": "ResetStatus"},
    "SendLocalList.req": {
        "localAuthorizationList[]": "AuthorizationData",
        "localAuthorizationList[].idTagInfo": "IdTagInfo",
        "localAuthorizationList[].idTagInfo.status": "AuthorizationStatus",
        "updateType": "UpdateType",
    },
    "SendLocalList.conf": {"status": "UpdateStatus"},
    "SetChargingProfile.req": _profile("csChargingProfiles"),
    "SetChargingProfile.conf": {"status": "ChargingProfileStatus"},
    "SignCertificate.conf": {"status": "GenericStatus"},
    "SignedFirmwareStatusNotification.req": {"status": "SignedFirmwareStatus"},
    "SignedUpdateFirmware.req": {"firmware": "Firmware"},
    "SignedUpdateFirmware.conf": {"status": "UpdateFirmwareStatus"},
    "StartTransaction.conf": _IDTAGINFO,
    "StatusNotification.req": {
        "errorCode": "ChargePointErrorCode",
        "status": "ChargePointStatus",
    },
    "StopTransaction.req": {"reason": "Reason", **_meter_value("transactionData[]")},
    "StopTransaction.conf": _IDTAGINFO,
    "TriggerMessage.req": {"requestedMessage": "MessageTrigger"},
    "TriggerMessage.conf": {"status": "TriggerMessageStatus"},
    "UnlockConnector.conf": {"status": "UnlockStatus"},
}

# Enums whose schemas disagree, served by one Rust type holding the union of
# their values; each value missing from some schema says so in its doc.
# MeterValues.req lists `Hertz`, StopTransaction.req does not: two copies of
# one 1.6 type that drifted apart, and a MeterValue must fit both messages.
WIDENED = {"UnitOfMeasure"}

SPEC_16 = "OCPP 1.6 §7"
SPEC_WP = "Security Whitepaper ed. 2"

# Rust type name -> (where it is defined, its name there, doc).
TYPES = {
    "AuthorizationData": (SPEC_16, None, "One entry of the Local Authorization List; in a "
                          "differential update, an entry without idTagInfo removes the idTag."),
    "AuthorizationStatus": (SPEC_16, None, "Whether an idTag is allowed to charge."),
    "AvailabilityStatus": (SPEC_16, None, "Answer to ChangeAvailability."),
    "AvailabilityType": (SPEC_16, None, "What ChangeAvailability asks for."),
    "CancelReservationStatus": (SPEC_16, None, "Answer to CancelReservation."),
    "CertificateHashData": (SPEC_WP, "CertificateHashDataType", "Identifies a certificate: "
                            "hashes of its issuer's name and key, and its serial number."),
    "CertificateSignedStatus": (SPEC_WP, "CertificateSignedStatusEnumType",
                                "Answer to CertificateSigned."),
    "CertificateUse": (SPEC_WP, "CertificateUseEnumType", "Kind of root certificate."),
    "ChargePointErrorCode": (SPEC_16, None, "Error reported in a StatusNotification."),
    "ChargePointStatus": (SPEC_16, None, "Status of a connector (connector 0: of the Charge "
                          "Point) in a StatusNotification."),
    "ChargingProfile": (SPEC_16, None, "A schedule of limits with its purpose, stack level "
                        "and validity."),
    "ChargingProfileKindType": (SPEC_16, None, "How a profile's schedule is anchored in time."),
    "ChargingProfilePurposeType": (SPEC_16, None, "What a profile limits: the Charge Point, "
                                   "transactions by default, or one transaction."),
    "ChargingProfileStatus": (SPEC_16, None, "Answer to SetChargingProfile."),
    "ChargingRateUnitType": (SPEC_16, None, "Unit of a schedule's limits: amperes or watts."),
    "ChargingSchedule": (SPEC_16, None, "Limits over time, as periods counted from the "
                         "schedule's start."),
    "ChargingSchedulePeriod": (SPEC_16, None, "One period of a schedule: its start in seconds "
                               "from the schedule's start, its limit and phase count."),
    "ClearCacheStatus": (SPEC_16, None, "Answer to ClearCache."),
    "ClearChargingProfileStatus": (SPEC_16, None, "Answer to ClearChargingProfile."),
    "ConfigurationStatus": (SPEC_16, None, "Answer to ChangeConfiguration."),
    "DataTransferStatus": (SPEC_16, None, "Answer to DataTransfer."),
    "DeleteCertificateStatus": (SPEC_WP, "DeleteCertificateStatusEnumType",
                                "Answer to DeleteCertificate."),
    "DiagnosticsStatus": (SPEC_16, None, "Progress of a diagnostics upload."),
    "ExtendedMessageTrigger": (SPEC_WP, "MessageTriggerEnumType", "Messages that "
                               "ExtendedTriggerMessage can ask for (named apart from 1.6's "
                               "MessageTrigger, which differs)."),
    "Firmware": (SPEC_WP, "FirmwareType", "Where to get a signed firmware image, when to "
                 "install it, and how to verify it."),
    "FirmwareStatus": (SPEC_16, None, "Progress of a firmware update (UpdateFirmware)."),
    "GenericStatus": (SPEC_WP, "GenericStatusEnumType", "Answer to SignCertificate."),
    "GetCompositeScheduleStatus": (SPEC_16, None, "Answer to GetCompositeSchedule."),
    "GetInstalledCertificateStatus": (SPEC_WP, "GetInstalledCertificateStatusEnumType",
                                      "Answer to GetInstalledCertificateIds."),
    "HashAlgorithm": (SPEC_WP, "HashAlgorithmEnumType", "Hash used in CertificateHashData."),
    "IdTagInfo": (SPEC_16, None, "Whether an idTag is authorized, until when, and its parent "
                  "(group) idTag."),
    "InstallCertificateStatus": (SPEC_WP, "InstallCertificateStatusEnumType",
                                 "Answer to InstallCertificate."),
    "KeyValue": (SPEC_16, None, "A configuration key, its value, and whether it is read-only."),
    "Location": (SPEC_16, None, "Where a sampled value was measured."),
    "LogParameters": (SPEC_WP, "LogParametersType", "Where to upload a log, and the time span "
                      "it covers."),
    "LogStatus": (SPEC_WP, "LogStatusEnumType", "Answer to GetLog."),
    "LogType": (SPEC_WP, "LogEnumType", "Which log GetLog asks for."),
    "Measurand": (SPEC_16, None, "What a sampled value measures."),
    "MessageTrigger": (SPEC_16, None, "Messages that TriggerMessage can ask for."),
    "MeterValue": (SPEC_16, None, "Sampled values taken at one moment."),
    "Phase": (SPEC_16, None, "Phase, or pair of phases, a sampled value applies to."),
    "ReadingContext": (SPEC_16, None, "Why a sampled value was taken."),
    "Reason": (SPEC_16, None, "Why a transaction stopped."),
    "RecurrencyKindType": (SPEC_16, None, "After which period a recurring profile repeats."),
    "RegistrationStatus": (SPEC_16, None, "Answer to BootNotification."),
    "RemoteStartStopStatus": (SPEC_16, None, "Answer to RemoteStartTransaction and "
                              "RemoteStopTransaction."),
    "ReservationStatus": (SPEC_16, None, "Answer to ReserveNow."),
    "ResetStatus": (SPEC_16, None, "Answer to Reset."),
    "ResetType": (SPEC_16, None, "Soft or hard reset."),
    "SampledValue": (SPEC_16, None, "One measured value (as a string) with its measurand, "
                     "phase, location, unit and context."),
    "SignedFirmwareStatus": (SPEC_WP, "FirmwareStatusEnumType", "Progress of a signed "
                             "firmware update (named apart from 1.6's FirmwareStatus, which "
                             "differs)."),
    "TriggerMessageStatus": (SPEC_16, None, "Answer to TriggerMessage and "
                             "ExtendedTriggerMessage (the whitepaper's "
                             "TriggerMessageStatusEnumType has the same values)."),
    "UnitOfMeasure": (SPEC_16, None, "Unit of a sampled value. `Celcius` is the schemas' own "
                      "misspelling, kept beside `Celsius`."),
    "UnlockStatus": (SPEC_16, None, "Answer to UnlockConnector."),
    "UpdateFirmwareStatus": (SPEC_WP, "UpdateFirmwareStatusEnumType",
                             "Answer to SignedUpdateFirmware."),
    "UpdateStatus": (SPEC_16, None, "Answer to SendLocalList."),
    "UpdateType": (SPEC_16, None, "Whether SendLocalList replaces the list or changes it."),
    "UploadLogStatus": (SPEC_WP, "UploadLogStatusEnumType", "Progress of a log upload."),
    "ValueFormat": (SPEC_16, None, "Plain value, or signed data."),
}

# Schema keywords the generator understands; any other stops it, so that no
# constraint is dropped unnoticed. Those the Rust types cannot carry
# (minItems, multipleOf, format uri) become doc notes.
KNOWN_KEYWORDS = {
    "$schema", "$id", "title", "definitions", "javaType", "$ref", "type", "properties",
    "required", "additionalProperties", "additionalItems", "items", "enum", "maxLength",
    "format", "minItems", "multipleOf",
}

RUST_KEYWORDS = {"type", "ref", "match", "move", "use", "loop", "mod", "fn", "impl", "crate"}


class GenError(Exception):
    pass


def snake(name):
    out = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    return f"r#{out}" if out in RUST_KEYWORDS else out


def variant_name(value):
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", value) if p]
    name = "".join(p[0].upper() + p[1:] for p in parts)
    if not name or not name[0].isalpha():
        raise GenError(f"no Rust variant name for enum value {value!r}")
    return name


def wrap(text, width=92):
    return textwrap.wrap(text, width) or [""]


class Enum:
    def __init__(self, name, values, origin):
        self.name = name
        self.values = list(values)
        # origin -> values that schema lists (for WIDENED enums).
        self.occurrences = {origin: list(values)}


class Struct:
    def __init__(self, name, fields, deny_unknown, origin):
        self.name = name
        self.fields = fields  # [Field]
        self.deny_unknown = deny_unknown
        self.origins = [origin]

    def shape(self):
        return (self.deny_unknown, [f.shape() for f in self.fields])


class Field:
    def __init__(self, json_name, rust_type, required, notes):
        self.json_name = json_name
        self.rust_type = rust_type
        self.required = required
        # origin -> notes about constraints the type does not carry
        self.notes = notes

    def shape(self):
        return (self.json_name, self.rust_type, self.required)


class Generator:
    def __init__(self, schema_dir):
        self.schema_dir = schema_dir
        self.types = {}  # name -> Enum | Struct
        self.used_names = set()
        self.messages = []  # (action, request Struct, response Struct)

    def run(self):
        files = sorted(self.schema_dir.glob("*.json"))
        actions = sorted(f.stem for f in files if not f.stem.endswith("Response"))
        for action in actions:
            for suffix in ("", "Response"):
                if not (self.schema_dir / f"{action}{suffix}.json").exists():
                    raise GenError(f"{action}{suffix}.json is missing")
        if len(files) != 2 * len(actions):
            raise GenError("a Response schema has no request schema")
        self.check_tables(actions)
        for action in actions:
            parts = []
            for suffix, key in (("", f"{action}.req"), ("Response", f"{action}.conf")):
                path = self.schema_dir / f"{action}{suffix}.json"
                schema = json.loads(path.read_text())
                name = f"{action}{'Response' if suffix else 'Request'}"
                parts.append(self.message(key, name, schema))
            self.messages.append((action, *parts))
        unused = {
            (key, path) for key, table in NAMES.items() for path in table
        } - self.used_names
        if unused:
            raise GenError(f"NAMES entries match no schema position: {sorted(unused)}")
        if set(TYPES) != {n for n in self.types}:
            raise GenError(
                f"TYPES and the generated types differ: "
                f"no doc for {sorted(set(self.types) - set(TYPES))}, "
                f"unused docs {sorted(set(TYPES) - set(self.types))}"
            )
        return actions

    def check_tables(self, actions):
        both = set(CHARGE_POINT_INITIATED) & set(CENTRAL_SYSTEM_INITIATED)
        covered = set(CHARGE_POINT_INITIATED) | set(CENTRAL_SYSTEM_INITIATED)
        if both != {"DataTransfer"} or covered != set(actions):
            raise GenError(
                f"initiator lists disagree with the schemas: "
                f"unlisted {sorted(set(actions) - covered)}, "
                f"without schema {sorted(covered - set(actions))}, both {sorted(both)}"
            )
        for table, what in ((ACTION_DOCS, "ACTION_DOCS"),):
            if set(table) != set(actions):
                raise GenError(f"{what} disagrees with the schemas")
        if not WHITEPAPER <= set(actions):
            raise GenError(f"whitepaper actions without schema: {WHITEPAPER - set(actions)}")

    def message(self, key, name, schema):
        if schema.get("type") != "object":
            raise GenError(f"{key}: the root is not an object")
        struct = self.object_fields(key, "", schema, schema, name)
        if name in self.types or name in TYPES:
            raise GenError(f"{key}: message name {name} is also a type name")
        return struct

    def resolve(self, key, root, node):
        ref = node.get("$ref")
        if ref is None:
            return node
        if not ref.startswith("#/definitions/"):
            raise GenError(f"{key}: unsupported $ref {ref}")
        target = root.get("definitions", {}).get(ref[len("#/definitions/"):])
        if target is None:
            raise GenError(f"{key}: dangling $ref {ref}")
        return target

    def object_fields(self, key, path, node, root, name):
        fields = []
        required = node.get("required", [])
        properties = node.get("properties", {})
        for missing in set(required) - set(properties):
            raise GenError(f"{key}: {path or '<root>'} requires undefined {missing}")
        for prop, sub in properties.items():
            sub_path = f"{path}.{prop}" if path else prop
            notes = []
            rust_type = self.rust_type(key, sub_path, sub, root, notes)
            fields.append(Field(prop, rust_type, prop in required, {key: notes}))
        deny = node.get("additionalProperties", True) is False
        return Struct(name, fields, deny, key)

    def name_for(self, key, path):
        name = NAMES.get(key, {}).get(path)
        if name is None:
            raise GenError(f"no name for ({key!r}, {path!r}) in NAMES")
        self.used_names.add((key, path))
        return name

    def rust_type(self, key, path, node, root, notes):
        node = self.resolve(key, root, node)
        unknown = set(node) - KNOWN_KEYWORDS
        if unknown:
            raise GenError(f"{key}: {path}: unsupported keywords {sorted(unknown)}")
        kind = node.get("type")
        if "multipleOf" in node:
            notes.append(f"a multiple of {node['multipleOf']}")
        if kind == "string":
            if "enum" in node:
                return self.define_enum(self.name_for(key, path), node["enum"], key)
            fmt = node.get("format")
            if fmt == "date-time":
                return "DateTime"
            if fmt == "uri":
                notes.append("a URI (format `uri`)")
            elif fmt is not None:
                raise GenError(f"{key}: {path}: unsupported format {fmt}")
            if "maxLength" in node:
                return f"CiString<{node['maxLength']}>"
            return "String"
        if kind == "integer":
            return "i32"
        if kind == "number":
            return "f64"
        if kind == "boolean":
            return "bool"
        if kind == "array":
            if "minItems" in node:
                count = node["minItems"]
                notes.append("at least one item" if count == 1 else f"at least {count} items")
            item = self.rust_type(key, f"{path}[]", node["items"], root, [])
            return f"Vec<{item}>"
        if kind == "object":
            name = self.name_for(key, path)
            struct = self.object_fields(key, path, node, root, name)
            return self.define_struct(struct, key)
        raise GenError(f"{key}: {path}: unsupported type {kind!r}")

    def define_enum(self, name, values, origin):
        if len(set(values)) != len(values):
            raise GenError(f"{origin}: {name} repeats a value")
        variants = [variant_name(v) for v in values]
        if len(set(variants)) != len(variants):
            raise GenError(f"{origin}: {name}: two values give one variant name")
        known = self.types.get(name)
        if known is None:
            self.types[name] = Enum(name, values, origin)
            return name
        if not isinstance(known, Enum):
            raise GenError(f"{origin}: {name} names both an object and an enum")
        if known.values != list(values):
            if name not in WIDENED:
                raise GenError(
                    f"{origin}: {name} has values {values}, but "
                    f"{sorted(known.occurrences)} gave {known.values}; name them apart in "
                    f"NAMES (or add {name} to WIDENED if one type must serve both)"
                )
            for value in values:
                if value not in known.values:
                    known.values.append(value)
        known.occurrences.setdefault(origin, list(values))
        return name

    def define_struct(self, struct, origin):
        known = self.types.get(struct.name)
        if known is None:
            self.types[struct.name] = struct
            return struct.name
        if not isinstance(known, Struct):
            raise GenError(f"{origin}: {struct.name} names both an enum and an object")
        if known.shape() != struct.shape():
            raise GenError(
                f"{origin}: {struct.name} differs from the one in {known.origins}: "
                f"{struct.shape()} vs {known.shape()}; name them apart in NAMES"
            )
        known.origins.append(origin)
        for mine, theirs in zip(known.fields, struct.fields):
            mine.notes.update(theirs.notes)
        return struct.name

    # ---- output ------------------------------------------------------------

    def render(self, actions):
        out = []
        w = out.append
        w(HEADER)
        w("/// Every action, as it appears in a CALL.")
        w("pub const ACTIONS: &[&str] = &[")
        for action in actions:
            w(f'    "{action}",')
        w("];\n")
        w("/// Actions whose request the Charge Point sends (DataTransfer: both).")
        w("pub const CHARGE_POINT_INITIATED: &[&str] = &[")
        for action in CHARGE_POINT_INITIATED:
            w(f'    "{action}",')
        w("];\n")
        w("/// Actions whose request the Central System sends (DataTransfer: both).")
        w("pub const CENTRAL_SYSTEM_INITIATED: &[&str] = &[")
        for action in CENTRAL_SYSTEM_INITIATED:
            w(f'    "{action}",')
        w("];\n")
        w(ROUNDTRIP_HEAD)
        for action in actions:
            w(f'        "{action}" => roundtrip_as::<{action}Request>(response, payload),')
        w(ROUNDTRIP_TAIL)

        for action, request, response in self.messages:
            source = "Security Whitepaper ed. 2" if action in WHITEPAPER else "OCPP 1.6 §6"
            w(f"// ---- {action} " + "-" * max(0, 70 - len(action)) + "\n")
            for struct, suffix in ((request, "req"), (response, "conf")):
                w(f"/// `{action}.{suffix}` ({source}).")
                if suffix == "req":
                    w("///")
                    for line in wrap(ACTION_DOCS[action]):
                        w(f"/// {line}")
                self.render_struct(struct, out)
            w(f"impl Request for {action}Request {{")
            w(f'    const ACTION: &\'static str = "{action}";')
            w(f"    type Response = {action}Response;")
            w("}\n")

        w("// ---- Types shared by the messages " + "-" * 40 + "\n")
        for name in sorted(self.types):
            t = self.types[name]
            source, spec_name, doc = TYPES[name]
            for text in wrap(doc):
                w(f"/// {text}")
            w("///")
            w(f"/// {source}: `{spec_name or name}`.")
            if isinstance(t, Struct):
                self.render_struct(t, out, docs=False)
            else:
                self.render_enum(t, out)
        return "\n".join(out) + "\n"

    def render_struct(self, struct, out, docs=True):
        w = out.append
        derives = ["Debug", "Clone", "PartialEq"]
        if all(not f.required for f in struct.fields):
            derives.append("Default")
        derives += ["Serialize", "Deserialize"]
        w(f"#[derive({', '.join(derives)})]")
        if struct.deny_unknown:
            w('#[serde(remote = "Self", deny_unknown_fields)]')
        else:
            w('#[serde(remote = "Self")]')
        if not struct.fields:
            w(f"pub struct {struct.name} {{}}\n")
            w(f"object_only!({struct.name});\n")
            return
        w(f"pub struct {struct.name} {{")
        for field in struct.fields:
            for note in self.merged_notes(field):
                for text in wrap(note, 88):
                    w(f"    /// {text}")
            rust_name = snake(field.json_name)
            # A rename that repeats the name would only be noise.
            attrs = [] if rust_name == field.json_name else [f'rename = "{field.json_name}"']
            rust_type = field.rust_type
            if not field.required:
                attrs += ['skip_serializing_if = "Option::is_none"', "default"]
                rust_type = f"Option<{rust_type}>"
            if attrs:
                w(f"    #[serde({', '.join(attrs)})]")
            w(f"    pub {rust_name}: {rust_type},")
        w("}\n")
        w(f"object_only!({struct.name});\n")

    @staticmethod
    def merged_notes(field):
        everywhere = None
        for notes in field.notes.values():
            everywhere = set(notes) if everywhere is None else everywhere & set(notes)
        merged = []
        for origin, notes in sorted(field.notes.items()):
            for note in notes:
                if note not in everywhere:
                    merged.append(f"The {origin} schema wants {note}; not checked here.")
                elif f"The schema wants {note}; not checked here." not in merged:
                    merged.append(f"The schema wants {note}; not checked here.")
        return merged

    @staticmethod
    def render_enum(enum, out):
        w = out.append
        w("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]")
        w(f"pub enum {enum.name} {{")
        for value in enum.values:
            missing = sorted(o for o, vs in enum.occurrences.items() if value not in vs)
            if missing:
                w(f"    /// Not in the schema of {', '.join(missing)}.")
            w(f'    #[serde(rename = "{value}")]')
            w(f"    {variant_name(value)},")
        w("}\n")
        w(f"impl {enum.name} {{")
        w("    /// Every value, in the schema's order.")
        w("    pub const ALL: &[Self] = &[")
        for value in enum.values:
            w(f"        Self::{variant_name(value)},")
        w("    ];\n")
        w("    /// Every value as written on the wire, in the order of [`Self::ALL`].")
        w("    pub const VALUES: &[&str] = &[")
        for value in enum.values:
            w(f'        "{value}",')
        w("    ];\n")
        w("    /// The value as written on the wire.")
        w("    pub fn as_str(self) -> &'static str {")
        w("        match self {")
        for value in enum.values:
            w(f'            Self::{variant_name(value)} => "{value}",')
        w("        }")
        w("    }")
        w("}\n")
        w(f"string_enum!({enum.name});\n")


HEADER = """\
//! OCPP 1.6J messages: one request and one response type per action of
//! OCPP 1.6 edition 2 (§6 Messages, §7 Types) and of the Security
//! Whitepaper edition 2, with the serde shape of the official JSON schemas.
//!
//! GENERATED by `crates/evos-ocpp/tools/gen_v16.py` from the schemas of the
//! `ocpp` Python package (tests/requirements.txt). Do not edit: change the
//! generator and run, from the workspace root,
//! `target/test-venv/bin/python crates/evos-ocpp/tools/gen_v16.py`.
//!
//! Optional fields are never written as `null`; reading accepts `null` as
//! absent, since some Central Systems send it. Over-long strings, unknown
//! enum values and (where the schema forbids them) unknown fields are
//! refused with serde's standard wording, which the RPC layer maps to
//! OCPP-J CALLERROR codes.

// Variant names follow the spec's spelling (`EV`, `SHA256`, `VA`).
#![allow(clippy::upper_case_acronyms)]

use std::fmt;
use std::str::FromStr;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::{CiString, DateTime};

/// A request type: its action name and the type that answers it.
pub trait Request: Serialize + DeserializeOwned {
    const ACTION: &'static str;
    type Response: Serialize + DeserializeOwned;
}

/// A string that is none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {kind} value")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// Whether `action` is one of [`ACTIONS`].
pub fn is_known_action(action: &str) -> bool {
    ACTIONS.contains(&action)
}

// serde's derived `Deserialize` also reads a struct from an array of its
// fields, and an enum from `{"Value": null}`; the schemas allow neither.
// Structs therefore derive with `remote = "Self"`, which makes `serialize`
// and `deserialize` inherent functions, and `object_only!` implements the
// traits with them, reading from a JSON object only. (So `X::deserialize`
// names the lenient inherent function; go through serde_json or
// `Deserialize::deserialize`.) Enums are read by `string_enum!`, from a
// string only.
macro_rules! object_only {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $name::serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Object;

                impl<'de> Visitor<'de> for Object {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("struct ", stringify!($name)))
                    }

                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$name, A::Error> {
                        $name::deserialize(MapAccessDeserializer::new(map))
                    }
                }

                deserializer.deserialize_map(Object)
            }
        }
    };
}

/// `Display`, `FromStr` and `Deserialize` for an enum from its `ALL`,
/// `VALUES` and `as_str`.
macro_rules! string_enum {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match Self::VALUES.iter().position(|v| *v == s) {
                    Some(i) => Ok(Self::ALL[i]),
                    None => Err(UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                    }),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Str;

                impl Visitor<'_> for Str {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " string"))
                    }

                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        s.parse()
                            .map_err(|_| E::unknown_variant(s, $name::VALUES))
                    }
                }

                deserializer.deserialize_str(Str)
            }
        }
    };
}
"""

ROUNDTRIP_HEAD = """\
/// Reads `payload` as `action`'s request (or, with `response`, its response)
/// and writes it back: `Ok` holds the payload as this crate would send it,
/// `Err` says why the payload does not fit the schema. `None` for an
/// unknown action.
pub fn roundtrip(
    action: &str,
    response: bool,
    payload: &serde_json::Value,
) -> Option<Result<serde_json::Value, serde_json::Error>> {
    Some(match action {"""

ROUNDTRIP_TAIL = """\
        _ => return None,
    })
}

fn roundtrip_as<R: Request>(
    response: bool,
    payload: &serde_json::Value,
) -> Result<serde_json::Value, serde_json::Error> {
    if response {
        serde_json::to_value(R::Response::deserialize(payload)?)
    } else {
        serde_json::to_value(R::deserialize(payload)?)
    }
}
"""


def default_schema_dir():
    try:
        import ocpp  # noqa: PLC0415 - only needed without --schemas
    except ImportError as e:
        raise GenError(
            "the `ocpp` package is not importable; run with target/test-venv/bin/python "
            "or pass --schemas DIR"
        ) from e
    return pathlib.Path(ocpp.__file__).parent / "v16" / "schemas"


def rustfmt(source):
    try:
        done = subprocess.run(
            ["rustfmt", "--edition", "2024"],
            input=source,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as e:
        raise GenError("rustfmt is not on PATH") from e
    if done.returncode != 0:
        raise GenError(f"rustfmt refused the output:\n{done.stderr}")
    return done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", type=pathlib.Path, help="directory of the JSON schemas")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT)
    args = parser.parse_args()
    try:
        generator = Generator(args.schemas or default_schema_dir())
        actions = generator.run()
        source = rustfmt(generator.render(actions))
    except GenError as e:
        print(f"gen_v16: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != source:
            print(
                f"gen_v16: {args.output} is stale; regenerate it with "
                "target/test-venv/bin/python crates/evos-ocpp/tools/gen_v16.py",
                file=sys.stderr,
            )
            return 1
        print(f"gen_v16: {args.output} is current ({len(actions)} actions)")
        return 0
    args.output.write_text(source)
    print(f"gen_v16: wrote {args.output} ({len(actions)} actions, {len(generator.types)} types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
