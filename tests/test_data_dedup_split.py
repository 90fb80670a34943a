import random
from collections import Counter

import numpy as np
import pytest

from app.data import dedup
from app.data.split import assign, capped_counts, ngram_hashes, over_cap, overlap

EN = ["Your order left our warehouse on Monday with UPS and should reach you within four business days, "
      "and you can follow it any time from the Orders page of your account.",
      "You can return the lamp within thirty days: print the prepaid label from your account, drop the parcel "
      "at any courier point, and the refund follows within five days.",
      "Please use the forgot password link on the sign-in page; we will email you a reset link that stays "
      "valid for thirty minutes, so check your spam folder if it does not arrive."]
ZH = ["您的订单已于周一由顺丰发出，预计四个工作日内送达，您可以在账户的订单页面随时查看物流信息，如有问题请随时联系我们。",
      "台灯支持三十天无理由退货，请在账户中打印预付面单并交给快递员寄回，退款将在五天内退回原支付账户。",
      "请在登录页点击忘记密码，我们会发送一封有效期三十分钟的重置邮件，如果没有收到请检查垃圾邮件箱。"]


def groups(texts, threshold=0.8):
    sig = dedup.signatures(*dedup.shingles(texts), *dedup.permutations(128))
    return dedup.near_duplicate_groups(sig, 16, threshold)[0].tolist()


def test_near_duplicates_found_in_both_scripts_unrelated_kept():
    near = [EN[0] + " :)", EN[1].upper().replace(":", " -"), ZH[0] + "~", ZH[1].replace("。", "！")]
    label = groups(EN + ZH + near)
    assert label[:6] == [0, 1, 2, 3, 4, 5]  # the six originals are all unrelated
    assert label[6:] == [0, 1, 3, 4]  # each variant joins its original


def test_character_shingles_for_cjk():
    # A few characters changed in a Chinese text: character shingles see most of it unchanged.
    changed = ZH[2].replace("三十", "30")
    assert groups([ZH[2], changed], threshold=0.7) == [0, 0]
    # Word shingles would see the whole Chinese sentence as a handful of tokens: check we don't.
    assert len(dedup.shingle_hashes(ZH[2])) > 30


def test_short_replies_one_edit_apart_are_near_duplicates():
    en = ("Your refund for the desk lamp was approved today and will appear on your card within five "
          "business days. Thanks for your patience; reply here if it has not arrived by next Friday.")
    zh = "您的退款已经审核通过，预计三到五个工作日内原路退回，请您留意银行卡的到账通知。"
    near = [en.replace("Thanks", "Thank you"), zh.replace("请您", "请你")]
    assert groups([en, zh] + near + EN[:1] + ZH[:1]) == [0, 1, 0, 1, 4, 5]
    # the old fixed 5-token shingles miss both (estimated Jaccard 0.6-0.7 < 0.8)
    sig = dedup.signatures(*dedup.shingles([en, zh] + near, min_k=5), *dedup.permutations(128))
    assert dedup.near_duplicate_groups(sig, 16, 0.8)[0].tolist() == [0, 1, 2, 3]
    assert dedup.shingle_size(np.array([0, 20, 35, 52, 64, 65, 500]), np.array([5] * 7)).tolist() == \
        [1, 2, 2, 4, 4, 5, 5]


def test_estimated_jaccard_tracks_exact():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    base = [rng.choice(vocab) for _ in range(200)]
    a, b = dedup.permutations(256)
    for swaps in (5, 20, 60):
        other = list(base)
        for i in rng.sample(range(200), swaps):
            other[i] = rng.choice(vocab)
        s1, s2 = dedup.shingle_hashes(" ".join(base)), dedup.shingle_hashes(" ".join(other))
        exact = len(np.intersect1d(s1, s2)) / len(np.union1d(s1, s2))
        sig = dedup.signatures(np.concatenate([s1, s2]), np.array([len(s1), len(s2)]), a, b)
        assert abs((sig[0] == sig[1]).mean() - exact) < 0.08


def test_components_and_exact_groups():
    assert dedup.components(5, np.array([[3, 4], [1, 3]])).tolist() == [0, 1, 2, 1, 1]
    assert dedup.exact_groups(["x", "y", "x", "y", "z"]).tolist() == [0, 1, 0, 1, 4]
    sig = dedup.signatures(*dedup.shingles(["", "one two three"]), *dedup.permutations(8))
    assert sig[0].tolist() == [2 ** 32 - 1] * 8 and sig[1].max() < 2 ** 32 - 1


def test_batched_shingles_match_one_by_one():
    texts = EN + ZH + ["", "短句", "mixed 中文 and English words here"]
    hashes, counts = dedup.shingles(texts, 5, 5)
    parts = np.split(hashes, np.cumsum(counts)[:-1])
    for text, part in zip(texts, parts):
        assert np.array_equal(np.unique(part), dedup.shingle_hashes(text))
        one, _ = dedup.shingles([text])
        assert np.array_equal(part, one)


def test_stratified_split_is_deterministic():
    ids = [f"r{i}" for i in range(1000)]
    labels = ["a"] * 500 + ["b"] * 300 + ["c"] * 200
    split = assign(ids, labels, (0.8, 0.1, 0.1), seed=0)
    assert split == assign(list(reversed(ids)), list(reversed(labels)), (0.8, 0.1, 0.1), seed=0)
    by = Counter((lab, split[i]) for i, lab in zip(ids, labels))
    assert (by["a", "val"], by["b", "val"], by["c", "val"]) == (50, 30, 20)
    assert (by["a", "test"], by["b", "test"], by["c", "test"]) == (50, 30, 20)
    assert split != assign(ids, labels, (0.8, 0.1, 0.1), seed=1)


def test_class_cap():
    assert capped_counts({"a": 600, "b": 200, "c": 100, "d": 100}, 0.3) == {"a": 150, "b": 150, "c": 100, "d": 100}
    capped = capped_counts({"a": 600, "b": 200, "c": 100, "d": 100}, 0.3)
    assert max(capped.values()) <= 0.3 * sum(capped.values())
    assert capped_counts({"a": 5, "b": 5}, 0.3) == {"a": 5, "b": 5}  # infeasible with 2 classes: unchanged
    ids, labels = [f"r{i}" for i in range(100)], ["a"] * 70 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    dropped = over_cap(ids, labels, 0.3, seed=0)
    assert len(dropped) == 70 - 12 and all(i in ids[:70] for i in dropped)


def test_contamination_overlap():
    ref = np.unique(np.concatenate([ngram_hashes(t, 13) for t in EN[:1] + ZH[:1]]))
    assert overlap(EN[0], ref, 13) == 1.0 and overlap(ZH[0], ref, 13) == 1.0
    assert overlap(EN[1], ref, 13) == 0.0 and overlap(ZH[2], ref, 13) == 0.0
    assert 0 < overlap(EN[0][:90] + " " + EN[1], ref, 13) < 0.5


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_threshold_controls_merging(threshold):
    text = " ".join(f"w{i}" for i in range(100))
    variant = " ".join(f"w{i}" if i % 25 else "x" for i in range(100))  # 4 words changed of 100
    # 4 changes break about 4 * 5 of 96 shingles: Jaccard ~0.6
    merged = groups([text, variant], threshold) == [0, 0]
    assert merged == (threshold == 0.5)
