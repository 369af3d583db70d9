"""What an agent can read without a shell: the job schema, the example job and the bundled
profiles as MCP resources, and prompts for the common flows. Each is read from the bundle when
asked (one source: the files `rgt lint` and `rgt render` use), never copied into code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOB_SCHEMA_URI = "rgt://schemas/job.schema.json"
EXAMPLE_JOB_URI = "rgt://examples/job.yaml"
PROFILE_URI = "rgt://profiles/{name}"


def _reader(path: Path) -> Any:
    def read() -> str:
        return path.read_text(encoding="utf-8")

    return read


def register_resources(server: Any) -> None:
    """The job schema, the example job, and every bundled profile (Markdown + frontmatter)."""
    from rgt.bundle import bundle_path
    from rgt.job import JOB_SCHEMA, example_job_path
    from rgt.profile import bundled_profile_paths

    server.resource(
        JOB_SCHEMA_URI,
        name="job-schema",
        title="Job request schema",
        description="JSON Schema of a job request (launch's `job` argument, as a file or inline)",
        mime_type="application/schema+json",
    )(_reader(bundle_path("schemas", JOB_SCHEMA)))
    server.resource(
        EXAMPLE_JOB_URI,
        name="example-job",
        title="Example job request",
        description="A complete job request (YAML): copy it, change run_id, command and files",
        mime_type="application/yaml",
    )(_reader(example_job_path()))
    for path in bundled_profile_paths():
        server.resource(
            PROFILE_URI.format(name=path.stem),
            name=f"profile-{path.stem}",
            title=f"Platform profile {path.stem}",
            description="The platform's facts (frontmatter) and its 8 sections, gotchas included",
            mime_type="text/markdown",
        )(_reader(path))


def register_prompts(server: Any) -> None:
    """Prompts for the two flows an agent most often runs: a job end to end, and ending a
    rental whose job finished."""

    @server.prompt(
        name="run_a_job",
        title="Run a GPU job on a rented machine",
        description="search → launch → poll → copy → verify → destroy, with the Iron Law",
    )
    def run_a_job(gpu: str, max_price_per_hour: str, profile: str = "vastai") -> str:
        return (
            f"Run a job on a rented {gpu} through the rgt tools, profile {profile}, never above "
            f"{max_price_per_hour} $/h. First get_profile(name={profile!r}) and tell me its "
            f"danger clocks. Read the resource {JOB_SCHEMA_URI} (and {EXAMPLE_JOB_URI}) and "
            "write the job request as an object. search_offers for the GPU, show me the "
            "cheapest few with their estimate, and launch the one I pick with the job inline. "
            "Then poll with wait_seconds and follow next_action: on success copy → verify; "
            "destroy only when verify says ok, and I approve it in the prompt. On failure read "
            "the job's logs and tell me; discard only for a reason rgt proves."
        )

    @server.prompt(
        name="end_a_rental",
        title="Bring results home and end a rental",
        description="copy → verify → destroy one instance through the Iron Law gate",
    )
    def end_a_rental(instance_id: str) -> str:
        return (
            f"End the rental of instance {instance_id} without losing its results: poll it; "
            "when its job succeeded, call the copy its next_action names, then verify; only "
            "when verify returns ok, call destroy and I will type the instance id in the "
            "prompt. If anything refuses, follow the tool call the refusal names."
        )
