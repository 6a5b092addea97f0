"""The `objects:` section of a camera: what is valid, and errors with the line they are on."""

import textwrap

import pytest

from edgessl.edge_runtime.daemon.config_file import check_text

BASE = """\
    model: {bundle: /opt/bundle}
    state_dir: /tmp/state
    cameras:
      - id: yard
        url: /tmp/yard.mp4
        objects:
    """


def check(objects: str) -> tuple[object, list[str]]:
    text = textwrap.dedent(BASE) + textwrap.indent(textwrap.dedent(objects), " " * 10)
    return check_text(text, "edge.yaml")


def test_defaults_track_objects_instead_of_the_whole_frame():
    config, errors = check("{}")
    assert errors == []
    cam = config.cameras[0]
    assert cam.objects.proposer.type == "motion" and cam.region_list == []
    assert config.tracks.keep == 200


def test_zones_masks_and_limits_that_make_sense():
    config, errors = check("""
        zones:
          - {name: porch, points: [[0.1, 0.5], [0.5, 0.5], [0.5, 1.0], [0.1, 1.0]]}
        masks:
          - points: [[0, 0], [1, 0], [1, 0.1]]
        filters: {min_area: 0.002, max_area: 0.3}
        proposer: {type: motion, algorithm: knn, history: 200}
        """)
    assert errors == []
    objects = config.cameras[0].objects
    assert objects.zones[0].name == "porch" and objects.proposer.algorithm == "knn"


@pytest.mark.parametrize(("objects", "line", "message"), [
    ("zones:\n  - {name: door, points: [[0.2, 0.2], [1.4, 0.2], [0.5, 0.9]]}\n", 8, "outside the frame: (1.4, 0.2)"),
    ("zones:\n  - {name: door, points: []}\n", 8, "at least 3 points"),
    ("zones:\n  - {name: door, points: [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]}\n", 8, "is empty"),
    ("masks:\n  - points: [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]\n", 8, "mask is empty"),
    ("filters: {min_area: 0.4, max_area: 0.1}\n", 7, "min_area (0.4) must be below max_area (0.1)"),
    ("filters: {max_area: 3}\n", 7, "less than or equal to 1"),
    ("filters: {min_area: -0.1}\n", 7, "greater than 0"),
    ("zones:\n  - {name: a, points: [[0, 0], [1, 0], [1, 1]]}\n  - {name: a, points: [[0, 0], [1, 0], [0, 1]]}\n",
     6, "zone names must be unique"),
    ("proposer: {type: yolo}\n", 7, "'motion'"),
    ("tracker: {match_iou: 0}\n", 7, "greater than 0"),
    ("tracker: {max_lost: 2}\n", 7, "unknown key"),
])
def test_bad_objects_are_errors_with_their_line(objects, line, message):
    config, errors = check(objects)
    assert config is None
    text = "\n".join(errors)
    assert message in text, text
    assert f"edge.yaml:{line}:" in text, text
