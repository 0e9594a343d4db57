"""Where the gateway's files are: package data (`files/`, also the repository's `gateway/`), so that an installed
package serves the JSON API and the dashboard from wherever it runs. The descriptor set and the OpenAPI document are
generated into the same folder when the package builds (gateway/codegen.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The package is installed unzipped (setuptools' default for wheels), so its data is a real folder Envoy can read.
FILES = Path(str(resources.files("recommender.gateway") / "files"))
ENVOY_TEMPLATE = FILES / "envoy.yaml"
LUA_FILTER = FILES / "api.lua"
DASHBOARD = FILES / "dashboard.html"
DESCRIPTOR = FILES / "recommender.binpb"
OPENAPI = FILES / "openapi.json"
