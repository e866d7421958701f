"""The dbt profile's targets, read as dbt reads them: which warehouse a target builds, and whether
dbt runs Spark inside this process (`method: session`). dbt_runner and the Spark session both ask here."""

from __future__ import annotations

from lookalike_cli.errors import LookalikeError
from lookalike_cli.settings import Settings

PROFILE_NAME = "lookalike"


def profile_target(target: str, settings: Settings) -> dict:
    """One output of the `lookalike` profile with its env_var() calls rendered, as dbt renders them."""
    import jinja2
    import yaml

    env = settings.env()
    profiles = yaml.safe_load((settings.profiles_dir / "profiles.yml").read_text())
    outputs = profiles[PROFILE_NAME]["outputs"]
    if target not in outputs:
        raise LookalikeError(f"profiles.yml has no target {target!r}; targets: {', '.join(outputs)}.")

    def env_var(name: str, default: str | None = None) -> str:
        if name in env:
            return env[name]
        if default is None:
            raise LookalikeError(f"profiles.yml target {target!r} needs the environment variable {name}.")
        return default

    def render(value):
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, str):
            return jinja2.Environment().from_string(value).render(env_var=env_var)
        return value

    return render(outputs[target])


def is_session_target(target: str | None, settings: Settings) -> bool:
    """A dbt-spark target with `method: session`: dbt runs Spark inside its own process."""
    if not target:
        return False
    output = profile_target(target, settings)
    return output.get("type") == "spark" and output.get("method") == "session"
