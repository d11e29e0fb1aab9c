"""Write the demo corpus that ships with koen-align: parallel pairs (train.jsonl, validation.jsonl) and
the same sentences as monolingual text (mono_{ko,en}_{train,validation}.txt).

The sentences are composed from small hand-written Korean/English lexicons, so the corpus is
written for this project and free of third-party licences. Each pair is a subject, a time or
place, an object and a verb; Korean particles follow the final consonant of the preceding word
(은/는, 을/를), as a real sentence would. Validation pairs are combinations that never occur in
training, so rising retrieval accuracy there means the model aligned words, not memorised pairs.

    python data/demo/make_demo_data.py          # rewrites data/demo/*.jsonl deterministically
"""

import itertools
import json
import random
import unicodedata
from pathlib import Path

SUBJECTS = [
    ("the teacher", "선생님"), ("my mother", "어머니"), ("the student", "학생"), ("my friend", "친구"),
    ("the doctor", "의사"), ("the child", "아이"), ("my brother", "형"), ("the cook", "요리사"),
    ("the farmer", "농부"), ("my sister", "누나"), ("the driver", "운전사"), ("the singer", "가수"),
]
WHEN = [
    ("in the morning", "아침에"), ("at night", "밤에"), ("today", "오늘"), ("yesterday", "어제"),
    ("at school", "학교에서"), ("at home", "집에서"), ("in the park", "공원에서"), ("on weekends", "주말에"),
    ("at the market", "시장에서"), ("in the library", "도서관에서"),
]
# (object, verb) pairs that make sense together; English verb in the simple present, Korean in 해요체.
ACTIONS = [
    ("a book", "책", "reads", "읽어요"), ("a newspaper", "신문", "reads", "읽어요"),
    ("a letter", "편지", "writes", "써요"), ("a song", "노래", "sings", "불러요"),
    ("an apple", "사과", "eats", "먹어요"), ("bread", "빵", "eats", "먹어요"), ("rice", "밥", "eats", "먹어요"),
    ("water", "물", "drinks", "마셔요"), ("coffee", "커피", "drinks", "마셔요"), ("milk", "우유", "drinks", "마셔요"),
    ("a car", "자동차", "washes", "씻어요"), ("the dishes", "설거지", "does", "해요"),
    ("a movie", "영화", "watches", "봐요"), ("the news", "뉴스", "watches", "봐요"),
    ("a shirt", "셔츠", "buys", "사요"), ("shoes", "신발", "buys", "사요"), ("flowers", "꽃", "buys", "사요"),
    ("soccer", "축구", "plays", "해요"), ("the piano", "피아노", "plays", "쳐요"),
    ("a picture", "그림", "draws", "그려요"), ("English", "영어", "studies", "공부해요"),
    ("Korean", "한국어", "studies", "공부해요"), ("a cake", "케이크", "makes", "만들어요"),
]


def has_final_consonant(word: str) -> bool:
    """True when the last syllable of a Hangul word ends in a consonant (받침)."""
    code = ord(word[-1]) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


def korean(subject: str, when: str, obj: str, verb: str) -> str:
    topic = "은" if has_final_consonant(subject) else "는"
    accusative = "을" if has_final_consonant(obj) else "를"
    return f"{subject}{topic} {when} {obj}{accusative} {verb}."


def english(subject: str, when: str, obj: str, verb: str) -> str:
    sentence = f"{subject} {verb} {obj} {when}."
    return sentence[0].upper() + sentence[1:]


def main() -> None:
    rng = random.Random(20261126)
    pairs = []
    for (s_en, s_ko), (w_en, w_ko), (o_en, o_ko, v_en, v_ko) in itertools.product(SUBJECTS, WHEN, ACTIONS):
        ko = unicodedata.normalize("NFC", korean(s_ko, w_ko, o_ko, v_ko))
        pairs.append({"ko": ko, "en": english(s_en, w_en, o_en, v_en), "source": "koen-align-demo"})
    rng.shuffle(pairs)
    out = Path(__file__).resolve().parent
    splits = {"validation.jsonl": pairs[:256], "train.jsonl": pairs[256:2560]}
    for name, rows in splits.items():
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} pairs")
    # Monolingual text for the LM losses of the demo (stages 1-3): each side of the same splits,
    # four sentences to a line (a line is a document).
    for split, rows in (("train", splits["train.jsonl"]), ("validation", splits["validation.jsonl"])):
        for lang in ("ko", "en"):
            docs = [" ".join(r[lang] for r in rows[i : i + 4]) for i in range(0, len(rows), 4)]
            (out / f"mono_{lang}_{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
            print(f"mono_{lang}_{split}.txt: {len(docs)} documents")


if __name__ == "__main__":
    main()
