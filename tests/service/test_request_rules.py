"""One validation rule for multipart and JSON, the API key as a dependency, point sets,
render, the demo page and offline docs (issue 11, issue 12 wrong answers 1, 3, 5, 8)."""

from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest

from tests.service.conftest import png_bytes, post_image

# The WFLW -> iBUG-68 and 5-point lists, written out here independently of the code.
IBUG68 = ([*range(0, 33, 2)] + [*range(33, 38)] + [*range(42, 47)] + [*range(51, 60)]
          + [60, 61, 63, 64, 65, 67] + [68, 69, 71, 72, 73, 75] + [*range(76, 96)])
FIVE = [96, 97, 54, 76, 82]


def _json_body(sample, **fields):
    return {"image": base64.b64encode(sample["bytes"]).decode(), **fields}


HUGE_400 = "[[412,96,1" + "0" * 400 + ",210]]"
HUGE_5000 = "[[412,96,1" + "0" * 5000 + ",210]]"


@pytest.mark.parametrize("boxes", [HUGE_400, HUGE_5000], ids=["400-digits", "5000-digits"])
def test_huge_integers_in_multipart_boxes_are_422_like_json(client, sample, boxes):
    response = post_image(client, sample["bytes"], boxes)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_bboxes"
    as_json = client.post("/landmarks", content=json.dumps(_json_body(sample))[:-1] + f', "bboxes": {boxes}}}',
                          headers={"content-type": "application/json"})
    assert as_json.status_code == 422
    # The server goes on answering on the same client (keep-alive connection).
    assert post_image(client, sample["bytes"], [sample["bbox"]]).status_code == 200


@pytest.mark.parametrize("field, value, code", [
    ("flip_test", "yes", "invalid_field"),
    ("flip_test", 1, "invalid_field"),
    ("detect", "true", "invalid_field"),
    ("bboxes", [["412", 96, 180, 210]], "invalid_bboxes"),
    ("bboxes", [[412, 96, 180]], "invalid_bboxes"),
    ("points", "ibug_68", "invalid_field"),
])
def test_json_and_multipart_refuse_the_same_values(client, sample, field, value, code):
    as_json = client.post("/landmarks", json=_json_body(sample, **{field: value}))
    assert as_json.status_code == 422 and as_json.json()["code"] == code, as_json.text
    # The multipart spelling of the same value: JSON text for boxes, the literal text otherwise.
    text = json.dumps(value) if field == "bboxes" else str(value)
    if field == "detect":
        text = "True"  # the multipart form of a non-boolean: only "true"/"false" are booleans
    as_form = client.post("/landmarks", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                          data={field: text})
    assert as_form.status_code == 422 and as_form.json()["code"] == code, as_form.text


def test_sub_pixel_boxes_are_refused(client, sample):
    response = post_image(client, sample["bytes"], [[100, 100, 1e-9, 50]])
    assert response.status_code == 422 and response.json()["code"] == "invalid_bboxes"
    assert "1 px" in response.json()["detail"]
    assert post_image(client, sample["bytes"], [[100, 100, 1.0, 1.0]]).status_code == 200


def test_boxes_may_come_as_a_file_part(client, sample):
    boxes = json.dumps([sample["bbox"]]).encode()
    as_file = client.post("/landmarks", files={"image": ("f.jpg", sample["bytes"], "image/jpeg"),
                                               "bboxes": ("boxes.json", boxes, "application/json")})
    as_text = post_image(client, sample["bytes"], [sample["bbox"]])
    assert as_file.status_code == 200, as_file.text
    assert as_file.json()["faces"] == as_text.json()["faces"]


def test_point_sets_are_the_documented_subsets_in_order(client, sample):
    full = post_image(client, sample["bytes"], [sample["bbox"]]).json()["faces"][0]
    for name, index in (("ibug68", IBUG68), ("five", FIVE)):
        face = post_image(client, sample["bytes"], [sample["bbox"]], points=name).json()["faces"][0]
        assert len(face["landmarks"]) == len(index)
        assert face["landmarks"] == [full["landmarks"][i] for i in index]
        assert face["scores"] == [full["scores"][i] for i in index]
    info = client.get("/model").json()
    sets = {s["name"]: s for s in info["point_sets"]}
    assert sets["ibug68"]["indices"] == IBUG68 and sets["five"]["indices"] == FIVE
    assert all(not re.fullmatch(r"kpt-\d+", n) for n in sets["wflw98"]["names"])
    assert len(set(sets["wflw98"]["names"])) == 98


def test_client_boxes_carry_no_detection_and_whole_image_says_so(client, sample):
    face = post_image(client, sample["bytes"], [sample["bbox"]]).json()["faces"][0]
    assert face["detection"] is None and face["bbox"] == [float(v) for v in sample["bbox"]]
    body = client.post("/landmarks", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                       data={"detect": "false"}).json()
    assert body["faces"][0]["bbox"] == [0.0, 0.0, sample["width"], sample["height"]]
    assert any("whole image" in w for w in body["warnings"])


def test_detect_true_with_the_detector_off_is_a_clear_422(client, sample):
    response = client.post("/landmarks", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                           data={"detect": "true"})
    assert response.status_code == 422 and response.json()["code"] == "detector_disabled"


def test_api_key_is_a_dependency_and_cors_preflight_passes(app_client, sample):
    client = app_client(api_key="s3cret", cors_origins="http://ui.example")
    preflight = client.options("/landmarks", headers={
        "Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
    assert post_image(client, sample["bytes"], [sample["bbox"]]).status_code == 401
    for route in ("/landmarks", "/landmarks/render"):
        ok = client.post(route, files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                         data={"bboxes": json.dumps([sample["bbox"]])}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200, (route, ok.text)
    bearer = client.post("/landmarks", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                         data={"bboxes": json.dumps([sample["bbox"]])},
                         headers={"Authorization": "Bearer s3cret"})
    assert bearer.status_code == 200, bearer.text
    assert client.get("/model").status_code == 401
    assert client.get("/readyz").status_code == 200 and client.get("/metrics").status_code == 200
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("type") == "apiKey" and s.get("name") == "X-API-Key" for s in schemes.values())
    assert spec["paths"]["/landmarks"]["post"].get("security")
    assert spec["paths"]["/landmarks/render"]["post"].get("security")


def test_docs_and_demo_page_load_nothing_from_other_hosts(client):
    for page in ("/docs", "/redoc", "/"):
        response = client.get(page)
        assert response.status_code == 200, page
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", response.text)
        urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", response.text)
        assert urls, page
        for url in urls:
            assert not re.match(r"(https?:)?//", url), (page, url)
            if url.startswith("/"):
                assert client.get(url).status_code == 200, (page, url)


def test_render_draws_on_the_decoded_image_and_leaves_the_rest(client, sample):
    response = client.post("/landmarks/render", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                           data={"bboxes": json.dumps([sample["bbox"]]), "format": "png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    drawn = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(sample["bytes"], np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == original.shape
    changed = np.any(drawn != original, axis=2)
    assert changed.any()
    # Every changed pixel lies near the box or a landmark: the rest of the image is untouched.
    points = np.asarray(post_image(client, sample["bytes"], [sample["bbox"]]).json()["faces"][0]["landmarks"])
    x, y, w, h = sample["bbox"]
    near = np.zeros_like(changed)
    margin = 8
    near[max(int(y) - margin, 0):int(y + h) + margin, max(int(x) - margin, 0):int(x + w) + margin] = True
    for px, py in points:
        near[max(int(py) - margin, 0):int(py) + margin, max(int(px) - margin, 0):int(px) + margin] = True
    assert not (changed & ~near).any()
    jpeg = client.post("/landmarks/render", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                       data={"bboxes": json.dumps([sample["bbox"]])})
    assert jpeg.headers["content-type"] == "image/jpeg" and "x-render-scale" not in jpeg.headers


def test_render_scales_down_beyond_the_limit_and_says_so(app_client, sample):
    client = app_client(render_max_side=256)
    response = client.post("/landmarks/render", files={"image": ("f.jpg", sample["bytes"], "image/jpeg")},
                           data={"bboxes": json.dumps([sample["bbox"]]), "format": "png"})
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert max(image.shape[:2]) == 256
    assert float(response.headers["x-render-scale"]) == pytest.approx(256 / max(sample["width"], sample["height"]))


def test_render_refuses_an_unknown_format(client, sample):
    response = client.post("/landmarks/render", files={"image": ("f.png", png_bytes(np.zeros((64, 64, 3), np.uint8)),
                                                                 "image/png")},
                           data={"detect": "false", "format": "gif"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_field"


@pytest.mark.parametrize("flip", ["true", "false"])
def test_in_graph_preprocessing_answers_exactly_what_the_host_path_does(app_client, sample, flip):
    """The served uint8 graph (normalise + flip inside) and the host path give the same
    landmarks and scores to the bit, through the whole service."""
    host = app_client(preprocess_in_graph=False)
    graph = app_client(preprocess_in_graph=True)
    assert graph.app.state.runtime.in_graph and not host.app.state.runtime.in_graph
    a = post_image(host, sample["bytes"], [sample["bbox"], [300, 50, 200, 240]], flip_test=flip).json()
    b = post_image(graph, sample["bytes"], [sample["bbox"], [300, 50, 200, 240]], flip_test=flip).json()
    assert a["faces"] == b["faces"]
