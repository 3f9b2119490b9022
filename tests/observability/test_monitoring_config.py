"""The compose file's monitoring profile: Prometheus scrapes the API and the workers where they listen."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_the_api_and_every_worker_in_the_monitoring_profile_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert not any("monitoring" in s.get("profiles", []) for name, s in services.items() if name != "prometheus")
    mount = next(v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus.yml:"))
    config_path = mount.split(":")[1]
    assert f"--config.file={config_path}" in prometheus["command"]

    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_port = services["api"]["ports"][0].rsplit(":", 1)[-1]
    assert jobs["distillery-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert jobs["distillery-api"]["metrics_path"] == "/metrics"
    worker_env = services["worker"]["environment"]
    worker_sd = jobs["distillery-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"]
    assert str(worker_sd["port"]) == worker_env["DISTILLERY_WORKER_METRICS_PORT"]
    assert worker_env["DISTILLERY_WORKER_METRICS_HOST"] == "0.0.0.0"  # reachable from the prometheus container
