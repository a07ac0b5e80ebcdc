"""Validates an image's SBOMs with the ecosystem's own tools:
spdx-tools (the SPDX 2.3 document), cyclonedx-python-lib (the CycloneDX
1.6 document against CycloneDX's JSON schema) and ntia-conformance-checker
(the NTIA minimum elements of the SPDX document, reported). Prints one
line per check and exits 1 when the SPDX or CycloneDX validation fails.

    validate_sbom.py SPDX_FILE CYCLONEDX_FILE
"""
import json
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

spdx_file, cdx_file = sys.argv[1:3]
failed = False

document = parse_file(spdx_file)
messages = validate_full_spdx_document(document)
for m in messages:
    print(f"spdx: {m.validation_message}")
print(f"spdx-tools: {len(messages)} problems in {len(document.packages)} packages")
failed |= bool(messages)

with open(cdx_file) as f:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(f.read())
print(f"cyclonedx schema 1.6: {error or 'valid'}")
failed |= error is not None

from ntia_conformance_checker.sbom_checker import SbomChecker

checker = SbomChecker(spdx_file)
print("ntia: " + json.dumps(checker.output_json(), default=str))
# Reported, not required: a Nix store path names no supplier, and a path
# without a version (a source, a script) has none (docs/library.md).
print(f"ntia minimum elements: {checker.compliant}")
sys.exit(1 if failed else 0)
