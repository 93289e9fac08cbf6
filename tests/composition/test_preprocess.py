"""Where images are prepared: inline in the model replica (CPU models by default), or in
the Preprocessor deployment (``preprocess: deployment``), each through ``label_call`` as
the Ingress and the JobRunner make it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.model import ModelReplica
from deployments.preprocess import Preprocessor
from modelship.core.config import BatchingConfig, ModelConfig
from modelship.core.errors import UnsupportedMediaType
from modelship.core.messages import ItemOptions, ItemResult
from modelship.core.settings import Settings
from modelship.service.serving import label_call
from tests.conftest import EFFICIENTNET, payload

pytestmark = pytest.mark.asyncio(loop_scope="module")
INLINE = EFFICIENTNET.model_copy(update={"batching": BatchingConfig(max_batch_size=4)})
IN_DEPLOYMENT = INLINE.model_copy(update={"preprocess": "deployment"})
OPTIONS = ItemOptions(top_k=1)


def _bind(config: ModelConfig, settings: Settings) -> Application:
    return ModelReplica.options(
        user_config=config.batching.model_dump(),
        max_ongoing_requests=32,
        ray_actor_options={"num_cpus": 0.5},
    ).bind(config, settings)


@pytest.fixture(scope="module")
def inline(serve_cluster: int, settings: Settings) -> Iterator[DeploymentHandle]:
    yield serve.run(_bind(INLINE, settings), name="inline-images", route_prefix=None)
    serve.delete("inline-images")


@pytest.fixture(scope="module")
def preprocessor(serve_cluster: int, settings: Settings) -> Iterator[DeploymentHandle]:
    app = Preprocessor.bind([INLINE.model_copy(update={"name": "x"}), IN_DEPLOYMENT], settings)
    yield serve.run(app, name="preprocessor-under-test", route_prefix=None)
    serve.delete("preprocessor-under-test")


def _labels(results: list[ItemResult | Exception]) -> list[str]:
    return [r.output[0].label if isinstance(r, ItemResult) else r.code for r in results]  # type: ignore[attr-defined]


async def test_an_inline_model_decodes_its_own_images_and_a_bad_one_fails_alone(
    inline: DeploymentHandle, preprocessor: DeploymentHandle
) -> None:
    images = [payload("cat.jpg"), payload("truncated.jpg"), payload("coffee.jpg")]
    before = (await inline.stats.remote())["items"]
    # label_call sends an inline model's images to its replica alone: the Preprocessor
    # holds only models prepared in the deployment, and would refuse this one.
    results = await label_call(preprocessor, inline, INLINE, images, OPTIONS)
    assert [type(r).__name__ for r in results] == ["ItemResult", "InvalidInput", "ItemResult"]
    assert results[1].code == "corrupt_image"
    assert "cat" in results[0].output[0].label
    assert (results[0].image.width, results[0].image.height) == (451, 300)
    assert results[0].image.media_type == "image/jpeg"
    assert (await inline.stats.remote())["items"] == before + 2
    (only,) = await inline.label.remote([payload("not_an_image.pdf")], OPTIONS)
    assert isinstance(only, UnsupportedMediaType)  # 415, as through the Preprocessor


async def test_a_model_prepared_in_the_deployment_still_goes_through_the_preprocessor(
    inline: DeploymentHandle, preprocessor: DeploymentHandle, settings: Settings
) -> None:
    images = [payload("cat.jpg"), payload("truncated.jpg"), payload("coffee.jpg")]
    replica = serve.run(
        _bind(IN_DEPLOYMENT, settings), name="images-via-preprocessor", route_prefix=None
    )
    try:
        through = await label_call(preprocessor, replica, IN_DEPLOYMENT, images, OPTIONS)
        here = await inline.label.remote(images, OPTIONS)
        assert _labels(through) == _labels(here)
        assert through[1].code == "corrupt_image"
        assert through[0].output[0].score == pytest.approx(here[0].output[0].score, abs=1e-5)
        assert through[0].image == here[0].image
        # The Preprocessor holds only the models prepared there.
        prepared = await preprocessor.prepare_each.remote(IN_DEPLOYMENT.name, images[:1], OPTIONS)
        assert len(prepared) == 1
        with pytest.raises(Exception, match="KeyError"):
            await preprocessor.prepare_each.remote("x", images[:1], OPTIONS)
    finally:
        serve.delete("images-via-preprocessor")
