"""Attribute layout, label prior and sampling; the AC-GAN loss; conditional BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moepipe.models.attributes import AttributeLayout
from moepipe.models.dcgan import ConditionalBatchNorm2d, DCGANDiscriminator, DCGANGenerator
from moepipe.models.layers import LabelEmbedding
from moepipe.train.losses import attribute_loss

GROUPS = {
    "hair": {"tags": ["black_hair", "red_hair", "blue_hair"]},
    "gender": {"tags": ["1girl", "1boy"]},
    "accessories": {"tags": ["glasses", "hat"], "multi": True},
}
VOCABULARY = ["black_hair", "red_hair", "blue_hair", "1girl", "1boy", "glasses", "hat"]


@pytest.fixture()
def layout() -> AttributeLayout:
    return AttributeLayout(GROUPS, VOCABULARY)


def rows(*tag_lists: list[str]) -> np.ndarray:
    labels = np.zeros((len(tag_lists), len(VOCABULARY)), np.uint8)
    for i, tags in enumerate(tag_lists):
        labels[i, [VOCABULARY.index(t) for t in tags]] = 1
    return labels


def test_layout_columns_sizes_and_prior(layout):
    assert [g.columns for g in layout.groups] == [(0, 1, 2), (3, 4), (5, 6)]
    assert layout.group_sizes() == [3, 2, 2]
    labels = rows(["black_hair", "1girl", "glasses"], ["black_hair", "1boy"], ["red_hair", "1girl"],
                  ["black_hair", "1girl", "glasses", "hat"])
    prior = layout.prior(labels)
    assert prior["hair"] == [0.75, 0.25, 0.0]
    assert prior["gender"] == [0.75, 0.25]
    assert prior["accessories"] == [0.5, 0.25]
    # A vocabulary whose groups are interleaved cannot be split into contiguous tables.
    assert AttributeLayout(GROUPS, VOCABULARY[::-1]).group_sizes() is None


def test_complete_fills_every_unnamed_group_from_the_prior(layout):
    prior = {"hair": [0.0, 0.0, 1.0], "gender": [0.5, 0.5], "accessories": [1.0, 0.0]}
    filled = layout.complete([], prior, np.random.default_rng(0))
    assert "blue_hair" in filled and "glasses" in filled and "hat" not in filled
    assert sum(t in filled for t in ("1girl", "1boy")) == 1
    # Named groups are kept as asked; a named multi tag means the rest of that group is absent.
    kept = layout.complete(["red_hair", "hat"], prior, np.random.default_rng(0))
    assert "red_hair" in kept and "blue_hair" not in kept and "glasses" not in kept
    # Every group is drawn in a fixed order: naming hair does not change the gender drawn.
    for seed in range(20):
        a = layout.complete([], prior, np.random.default_rng(seed))
        b = layout.complete(["black_hair"], prior, np.random.default_rng(seed))
        assert [t for t in a if t in ("1girl", "1boy")] == [t for t in b if t in ("1girl", "1boy")]


def test_balanced_labels_are_uniform_per_single_group_and_follow_multi_rates(layout):
    prior = {"hair": [0.98, 0.01, 0.01], "gender": [0.9, 0.1], "accessories": [0.1, 0.5]}
    labels = layout.balanced(6000, prior, np.random.default_rng(1))
    assert (labels[:, 0:3].sum(axis=1) == 1).all() and (labels[:, 3:5].sum(axis=1) == 1).all()
    np.testing.assert_allclose(labels[:, 0:3].mean(axis=0), [1 / 3] * 3, atol=0.03)
    np.testing.assert_allclose(labels[:, 3:5].mean(axis=0), [0.5, 0.5], atol=0.03)
    np.testing.assert_allclose(labels[:, 5:7].mean(axis=0), [0.1, 0.5], atol=0.03)


def test_attribute_loss_is_low_when_logits_read_the_labels_and_its_gradient_points_there(layout):
    labels = torch.from_numpy(rows(["red_hair", "1boy", "hat"], ["blue_hair", "1girl"]).astype(np.float32))
    right = (labels * 2 - 1) * 8.0
    wrong = -right
    assert attribute_loss(right, labels, layout) < 0.01 < 5.0 < attribute_loss(wrong, labels, layout)
    logits = torch.zeros_like(labels, requires_grad=True)
    attribute_loss(logits, labels, layout).backward()
    # Descending the loss raises the asked tags' logits and lowers the others' (signs of -grad).
    step = -logits.grad
    assert (step[labels == 1] > 0).all()
    assert (step[labels == 0] < 0).all()


def test_attribute_loss_ignores_single_groups_a_row_is_not_labelled_in(layout):
    labels = torch.from_numpy(rows(["glasses"]).astype(np.float32))  # no hair, no gender
    logits = torch.randn(1, len(VOCABULARY), requires_grad=True)
    attribute_loss(logits, labels, layout).backward()
    assert (logits.grad[0, :5] == 0).all() and (logits.grad[0, 5:] != 0).all()


def test_label_embedding_keeps_groups_in_their_own_dimensions():
    embed = LabelEmbedding(7, 4, [3, 2, 2])
    assert embed.out_features == 12
    codes = embed(torch.eye(7))
    # A hair tag only moves the hair block of the code, an accessory only the accessory block.
    assert (codes[0, 4:] == 0).all() and (codes[0, :4] != 0).all()
    assert (codes[6, :8] == 0).all() and (codes[6, 8:] != 0).all()
    assert LabelEmbedding(7, 4, [3, 3]).group_sizes == [7]  # sizes that do not tile: one table


def test_conditional_batchnorm_starts_plain_and_learns_per_sample_affine():
    norm = ConditionalBatchNorm2d(6, code_dim=5)
    x, code = torch.randn(4, 6, 3, 3), torch.randn(4, 5)
    out = norm(x, code)
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(x, None, None, training=True))
    with torch.no_grad():
        norm.affine.weight.normal_()
    out = norm(x, code)
    plain = torch.nn.functional.batch_norm(x, None, None, training=True)
    gain, bias = norm.affine(code).chunk(2, dim=1)
    torch.testing.assert_close(out, plain * (1 + gain[:, :, None, None]) + bias[:, :, None, None])


def test_every_generator_layer_sees_the_labels():
    generator = DCGANGenerator(32, z_dim=8, width=8, label_dim=7, embed_dim=4, label_groups=[3, 2, 2])
    with torch.no_grad():  # make each CBN actually depend on the code
        for module in generator.modules():
            if isinstance(module, ConditionalBatchNorm2d):
                module.affine.weight.normal_(0, 0.5)
    seen = []
    hooks = [m.register_forward_hook(lambda m, inputs, out: seen.append(inputs[1]))
             for m in generator.modules() if isinstance(m, ConditionalBatchNorm2d)]
    z = torch.randn(2, 8)
    labels = torch.from_numpy(rows(["red_hair", "1boy"], ["blue_hair", "1girl"]).astype(np.float32))
    generator(z, labels)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 1 + len(generator.blocks)  # the 4x4 input and every upsampling stage
    assert all(code.shape == (2, 8 + 12) for code in seen)


def test_discriminator_attribute_head_shapes():
    discriminator = DCGANDiscriminator(32, width=8, label_dim=7)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    logits, attributes = discriminator(images, torch.zeros(3, 7), with_attributes=True)
    assert logits.shape == (3,) and attributes.shape == (3, 7)
    assert discriminator(images, torch.zeros(3, 7)).shape == (3,)
    plain = DCGANDiscriminator(32, width=8, label_dim=0)
    assert plain(images, with_attributes=True)[1].shape == (3, 0)
