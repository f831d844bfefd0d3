#!/usr/bin/env python3
"""Instances of the official OCPP 1.6J JSON schemas for tests/ocpp16_schemas.rs,
and an independent check of what the Rust types write back.

    ocpp16_schema_check.py generate   -> stdout: a JSON object {"schemas", "cases"}
    ocpp16_schema_check.py validate   <- stdin: [{"id", "schema", "label", "path",
                                                "input", "output"}] for the valid cases

`generate` reads every schema of the `ocpp` package's v16/schemas (the
OCPP 1.6 edition 2 and Security Whitepaper edition 2 messages) and builds
cases, each {"id", "schema", "action", "response", "label", "path",
"instance", "expect"}:

- expect "valid": instances the schema accepts: all optional fields
  present, only the required ones, every enum value at least once across
  a schema's instances, strings at exactly maxLength (also with a two-byte
  character), date-times with offsets and 0-9 fractional digits, i32 edges.
  Labels "full" and "required". Each is checked with jsonschema here.
- expect "valid": label "null_optional": an optional field sent as null,
  which the schema forbids but Central Systems send; it must read as
  absent and be written back without the field.
- expect a CALLERROR code (the kind of serde error the RPC layer maps):
  "missing_field" -> OccurenceConstraintViolation, "too_long" and
  "unknown_enum" -> PropertyConstraintViolation, "wrong_type" ->
  TypeConstraintViolation, "unknown_property" -> FormationViolation. Each
  is checked with jsonschema here to really be invalid. Two more labels go
  beyond what jsonschema checks by default, marked "beyond_schema":
  "bad_date_time" (not RFC 3339) and "integer_out_of_range" (not an i32),
  both PropertyConstraintViolation.

`validate` takes the JSON the Rust types wrote for each valid case, has
jsonschema validate it against the official schema, checks that every
date-time is written as YYYY-MM-DDTHH:MM:SS.mmmZ, and compares it with the
input after normalisation (date-times to UTC milliseconds, numbers by
value, null members dropped). It prints `OK <count>`, or the failures and
exits 1.
"""

import copy
import datetime
import json
import pathlib
import re
import sys

import jsonschema
import ocpp

SCHEMAS = pathlib.Path(ocpp.__file__).parent / "v16" / "schemas"

OCCURENCE = "OccurenceConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
TYPE = "TypeConstraintViolation"
FORMATION = "FormationViolation"

DATE_TIMES = [
    "2026-11-24T10:00:00.000Z",
    "2026-11-24T11:30:00+01:30",
    "2026-11-24T05:00:00.123456-05:00",
    "2027-01-01T00:59:59.9999+01:00",
    "2026-11-24t10:00:00.5z",
    "2028-02-29T23:59:59.999999999-00:00",
    "1999-12-31T23:00:00Z",
]
PLAIN_STRINGS = [
    "plain value",
    'quote " backslash \\ newline \n tab \t non-ASCII \u00e9\u20ac\U0001f50c',
    "",
]
URIS = ["https://csms.example.com/upload/diag", "ftp://user:secret@192.0.2.7:2121/fw/1.2.bin"]
INTEGERS = [1, 0, 2147483647, -2147483648, 42]
NUMBERS = [16, 0.5, 230.0, 0, 7.5, 11]


def load(name):
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def resolve(root, node):
    ref = node.get("$ref")
    if ref is None:
        return node
    return root["definitions"][ref[len("#/definitions/"):]]


def validator(root):
    cls = jsonschema.validators.validator_for(root)
    return cls(root)


class Builder:
    """Builds one valid instance; `index` rotates enum values and flavours."""

    def __init__(self, root, index, full):
        self.root = root
        self.index = index
        self.full = full
        self.enum_uses = set()  # (path, value)

    def pick(self, options, offset):
        return options[(self.index + offset) % len(options)]

    def value(self, node, path, offset=0):
        node = resolve(self.root, node)
        kind = node.get("type")
        if kind == "object":
            out = {}
            required = node.get("required", [])
            for n, (prop, sub) in enumerate(node.get("properties", {}).items()):
                if self.full or prop in required:
                    out[prop] = self.value(sub, f"{path}.{prop}" if path else prop, offset + n)
            return out
        if kind == "array":
            count = 2 if self.full else max(1, node.get("minItems", 0))
            return [self.value(node["items"], f"{path}[]", offset + i) for i in range(count)]
        if kind == "string":
            if "enum" in node:
                value = self.pick(node["enum"], offset)
                self.enum_uses.add((path, value))
                return value
            if node.get("format") == "date-time":
                return self.pick(DATE_TIMES, offset)
            if node.get("format") == "uri":
                return self.pick(URIS, offset)
            if "maxLength" in node:
                n = node["maxLength"]
                flavour = (self.index + offset) % 3
                if flavour == 0:
                    return ("Tag" + "0123456789" * (n // 10 + 1))[:n]
                if flavour == 1:
                    return "\u00e9" + "b" * (n - 1)
                return "x" * min(n, 5)
            return self.pick(PLAIN_STRINGS, offset)
        if kind == "integer":
            return self.pick(INTEGERS, offset)
        if kind == "number":
            check = validator({"multipleOf": node["multipleOf"]}) if "multipleOf" in node else None
            options = [v for v in NUMBERS if check is None or check.is_valid(v)]
            return self.pick(options, offset)
        if kind == "boolean":
            return (self.index + offset) % 2 == 0
        raise SystemExit(f"unsupported schema node {node}")


def enum_positions(root, node, path):
    """Every (path, values) of the enums in `node`."""
    node = resolve(root, node)
    if "enum" in node:
        yield path, node["enum"]
    for prop, sub in node.get("properties", {}).items():
        yield from enum_positions(root, sub, f"{path}.{prop}" if path else prop)
    if "items" in node:
        yield from enum_positions(root, node["items"], f"{path}[]")


def positions(root, node, instance, pointer):
    """Every (schema node, JSON pointer as a list) present in `instance`."""
    node = resolve(root, node)
    yield node, pointer
    if node.get("type") == "object" and isinstance(instance, dict):
        for prop, sub in node.get("properties", {}).items():
            if prop in instance:
                yield from positions(root, sub, instance[prop], pointer + [prop])
    if node.get("type") == "array" and isinstance(instance, list) and instance:
        # The first item stands for all of them.
        yield from positions(root, node["items"], instance[0], pointer + [0])


def at(instance, pointer):
    for key in pointer:
        instance = instance[key]
    return instance


def replaced(instance, pointer, value):
    out = copy.deepcopy(instance)
    if not pointer:
        return value
    at(out, pointer[:-1])[pointer[-1]] = value
    return out


def show(pointer):
    return "/" + "/".join(str(p) for p in pointer)


WRONG_TYPES = {
    "string": [42, {"a": 1}],
    "integer": ["42", 4.5, True],
    "number": ["16.0", [16]],
    "boolean": ["true", 1],
    "array": [{"0": 1}, "[]"],
    "object": [[], "{}"],
}


def invalid_cases(root, base):
    """(label, pointer, instance, expect, beyond_schema) for one valid base."""
    for node, pointer in positions(root, root, base, []):
        kind = node.get("type")
        here = at(base, pointer)
        if kind == "object":
            for prop in node.get("required", []):
                if prop in here:
                    broken = copy.deepcopy(base)
                    del at(broken, pointer)[prop]
                    yield "missing_field", pointer + [prop], broken, OCCURENCE, False
                    yield (
                        "wrong_type",
                        pointer + [prop],
                        replaced(base, pointer + [prop], None),
                        TYPE,
                        False,
                    )
            if node.get("additionalProperties") is False:
                broken = copy.deepcopy(base)
                target = at(broken, pointer)
                target["unexpectedField"] = "x"
                yield "unknown_property", pointer + ["unexpectedField"], broken, FORMATION, False
        if kind == "string" and "maxLength" in node:
            too_long = "Z" * (node["maxLength"] + 1)
            yield "too_long", pointer, replaced(base, pointer, too_long), PROPERTY, False
        if kind == "string" and "enum" in node:
            for wrong in ("NotAValue", node["enum"][0].lower(), node["enum"][0] + " "):
                if wrong not in node["enum"]:
                    yield "unknown_enum", pointer, replaced(base, pointer, wrong), PROPERTY, False
        if kind == "string" and node.get("format") == "date-time":
            for wrong in ("2026-11-24 10:00:00", "2026-11-24T10:00:00", "2026-02-30T00:00:00Z"):
                yield "bad_date_time", pointer, replaced(base, pointer, wrong), PROPERTY, True
        if kind == "integer":
            for wrong in (2147483648, -2147483649):
                yield (
                    "integer_out_of_range",
                    pointer,
                    replaced(base, pointer, wrong),
                    PROPERTY,
                    True,
                )
        for wrong in WRONG_TYPES[kind]:
            yield "wrong_type", pointer, replaced(base, pointer, wrong), TYPE, False


def null_optional_cases(root, base):
    for node, pointer in positions(root, root, base, []):
        if node.get("type") != "object":
            continue
        required = node.get("required", [])
        for prop in node.get("properties", {}):
            if prop not in required and prop in at(base, pointer):
                yield pointer + [prop], replaced(base, pointer + [prop], None)


def generate():
    names = sorted(p.stem for p in SCHEMAS.glob("*.json"))
    cases = []

    def add(name, label, pointer, instance, expect, beyond=False):
        response = name.endswith("Response")
        cases.append(
            {
                "id": len(cases),
                "schema": name,
                "action": name[: -len("Response")] if response else name,
                "response": response,
                "label": label,
                "path": show(pointer),
                "instance": instance,
                "expect": expect,
                "beyond_schema": beyond,
            }
        )

    for name in names:
        root = load(name)
        check = validator(root)
        enums = list(enum_positions(root, root, ""))
        rounds = max([len(values) for _, values in enums] + [len(DATE_TIMES)])
        used = set()
        valid = []
        for index in range(rounds):
            for full in (True, False):
                builder = Builder(root, index, full)
                instance = builder.value(root, "")
                if not full and instance in [v for _, v in valid]:
                    continue
                used |= builder.enum_uses
                valid.append(("full" if full else "required", instance))
        for path, values in enums:
            missing = [v for v in values if (path, v) not in used]
            if missing:
                raise SystemExit(f"{name}: {path}: values {missing} never generated")
        for label, instance in valid:
            errors = list(check.iter_errors(instance))
            if errors:
                raise SystemExit(f"{name}: generated {label} instance is invalid: {errors[0]}")
            add(name, label, [], instance, "valid")
        base = valid[0][1]
        for pointer, instance in null_optional_cases(root, base):
            add(name, "null_optional", pointer, instance, "valid")
        for label, pointer, instance, expect, beyond in invalid_cases(root, base):
            if not beyond and check.is_valid(instance):
                raise SystemExit(f"{name}: {label} at {show(pointer)} is valid after all")
            add(name, label, pointer, instance, expect, beyond)
    json.dump({"schemas": names, "cases": cases}, sys.stdout)


# ---- validate ------------------------------------------------------------

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
WRITTEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def utc_millis(text):
    """An RFC 3339 date-time as the Rust side must write it."""
    m = RFC3339.match(text)
    if m is None:
        raise ValueError(f"not RFC 3339: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = (m.group(7) or "") + "000"
    local = datetime.datetime(
        year, month, day, hour, minute, second, int(fraction[:3]) * 1000
    )
    if m.group(8) is None:
        sign = 1 if m.group(9) == "+" else -1
        local -= sign * datetime.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}Z"


def normalised(root, node, value):
    """`value` as the Rust side must write it back."""
    node = resolve(root, node)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {
            k: normalised(root, props.get(k, {}), v) for k, v in value.items() if v is not None
        }
    if isinstance(value, list):
        return [normalised(root, node.get("items", {}), v) for v in value]
    if node.get("format") == "date-time" and isinstance(value, str):
        return utc_millis(value)
    return value


def written_dates(root, node, value, problems, path):
    node = resolve(root, node)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for k, v in value.items():
            written_dates(root, props.get(k, {}), v, problems, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            written_dates(root, node.get("items", {}), v, problems, f"{path}/{i}")
    elif node.get("format") == "date-time" and not WRITTEN.match(str(value)):
        problems.append(f"{path}: date-time written as {value!r}")


def same(a, b):
    """JSON equality where 16 == 16.0 but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def validate():
    results = json.load(sys.stdin)
    roots = {}
    failures = []
    for result in results:
        name, output = result["schema"], result["output"]
        where = f"#{result['id']} {name} {result['label']} {result['path']}"
        if name not in roots:
            roots[name] = (load(name), validator(load(name)))
        root, check = roots[name]
        for error in check.iter_errors(output):
            failures.append(f"{where}: written JSON breaks the schema: {error.message}")
        problems = []
        written_dates(root, root, output, problems, "")
        expected = normalised(root, root, result["input"])
        failures += [f"{where}: {p}" for p in problems]
        if not same(expected, output):
            failures.append(
                f"{where}: written JSON differs from the input\n"
                f"  input:    {json.dumps(result['input'])}\n"
                f"  expected: {json.dumps(expected)}\n"
                f"  written:  {json.dumps(output)}"
            )
    if failures:
        print("\n".join(failures))
        print(f"FAILED {len(failures)} of {len(results)}")
        return 1
    print(f"OK {len(results)}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["generate"]:
        generate()
    elif sys.argv[1:] == ["validate"]:
        sys.exit(validate())
    else:
        sys.exit(f"usage: {sys.argv[0]} generate|validate")
