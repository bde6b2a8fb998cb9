#!/usr/bin/env python3
"""Checks recorded HTTP responses against Schemas/openapi.yaml.

Usage: validate_openapi.py SPEC RESPONSES_JSON
RESPONSES_JSON is a list of {"method", "path" (the route template), "status", "contentType", "body"}.
Every response must be documented for its route, method, status and content type, and its body
must validate against the documented schema (OpenAPI 3.0 rules: nullable, additionalProperties).
Prints one line per failure and exits 1 if there is any.

Needs only Debian's python3-yaml and python3-jsonschema: an OpenAPI 3.0 schema is JSON Schema
draft 4 plus `nullable`, which is turned into a "null" type before validating.
"""
import json
import sys

import yaml
from jsonschema import Draft4Validator


def resolve(node, root):
    """Inlines every local $ref, so that the validator sees one self-contained schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(target, root)
        return {key: resolve(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, root) for item in node]
    return node


def json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema draft 4: `nullable: true` admits null."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {}
    for key, value in node.items():
        if key == "properties":
            schema[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key != "nullable":
            schema[key] = json_schema(value)
    if node.get("nullable") is True:
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            schema["type"] = types + ["null"]
            if "enum" in schema:
                schema["enum"] = schema["enum"] + [None]
        else:
            schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def main():
    spec = yaml.safe_load(open(sys.argv[1]))
    spec = resolve(spec, spec)
    responses = json.load(open(sys.argv[2]))
    failures = []
    for item in responses:
        where = f'{item["method"]} {item["path"]} -> {item["status"]}'
        operation = spec["paths"].get(item["path"], {}).get(item["method"].lower())
        if operation is None:
            failures.append(f"{where}: route not documented")
            continue
        documented = operation["responses"].get(str(item["status"]))
        if documented is None:
            failures.append(f"{where}: status not documented")
            continue
        media = item["contentType"].split(";")[0].strip()
        content = documented.get("content", {})
        if not content:
            if item["body"]:
                failures.append(f"{where}: a body where none is documented")
            continue
        if media not in content:
            failures.append(f"{where}: content type {media} not documented ({', '.join(content)})")
            continue
        schema = content[media].get("schema", {})
        body = item["body"]
        if media.endswith("json"):
            try:
                body = json.loads(body)
            except ValueError as error:
                failures.append(f"{where}: body is not JSON: {error}")
                continue
        elif media.endswith("yaml"):
            try:
                body = yaml.safe_load(body)
            except yaml.YAMLError as error:
                failures.append(f"{where}: body is not YAML: {error}")
                continue
        errors = sorted(Draft4Validator(json_schema(schema)).iter_errors(body), key=str)
        for error in errors[:3]:
            failures.append(f"{where}: {error.message} at {list(error.absolute_path)}")
    for failure in failures:
        print(failure)
    print(f"{len(responses)} responses checked, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
