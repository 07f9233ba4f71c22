"""The docker backend's settings from the environment (``RECCHAOS_DOCKER_*``): how the harness
reaches the containers, and the errors a bad value gets. Pure: no engine is contacted."""

import pytest

from harness.model.errors import UsageError
from harness.sut.containers import DockerOptions


def test_a_local_engine_is_reached_on_the_cluster_network_without_docker_proxy() -> None:
    assert DockerOptions.from_env({}).reaches_network()
    assert DockerOptions.from_env({"DOCKER_HOST": "unix:///tmp/x/docker.sock"}).reaches_network()


def test_a_remote_engine_is_reached_through_published_ports() -> None:
    assert not DockerOptions.from_env({"DOCKER_HOST": "tcp://10.0.0.5:2375"}).reaches_network()
    remote_but_asked = {"DOCKER_HOST": "ssh://ci@host", "RECCHAOS_DOCKER_REACH": "network"}
    assert DockerOptions.from_env(remote_but_asked).reaches_network()


@pytest.mark.parametrize("value", ["published", " Published "])
def test_published_can_be_chosen_for_a_local_engine(value: str) -> None:
    opts = DockerOptions.from_env({"RECCHAOS_DOCKER_REACH": value})
    assert opts.reach == "published" and not opts.reaches_network()


def test_a_bad_reach_names_the_value_the_variable_and_the_choices() -> None:
    with pytest.raises(UsageError) as err:
        DockerOptions.from_env({"RECCHAOS_DOCKER_REACH": "bridge"})
    text = str(err.value)
    assert "'bridge'" in text and "RECCHAOS_DOCKER_REACH" in text
    assert all(choice in text for choice in ("network", "published", "auto"))
