"""Write the demo's paired multiple-choice evaluation set: eval_en.jsonl and eval_ko.jsonl, the same items in
English and Korean, joined by ``id``, with the gold answer at the same position in both.

The items are written for this project from small hand-written lexicons (the demo corpus's own, from
make_demo_data.py, and a few hand-written questions), so the set is free of third-party licences. Every answer
choice is a word or phrase of the demo corpus, so the demo tokenizer (trained on the demo pairs) spells every
choice without unknown tokens, and a model trained on the demo can in principle tell the choices apart in both
languages. Five kinds of item (field ``topic``):

- ``reading``: a passage of three demo sentences, then a question on one of them (what? who? where?); three
  questions share each passage, and share its ``cluster`` (the passage), as Belebele's questions share theirs.
- ``verbs``: a demo sentence with its verb blanked; the other choices are verbs that cannot take that object.
- ``categories``: "Which of these do people drink?"; the other choices cannot be drunk.
- ``roles`` and ``places``: who does a job, where something happens (hand-written questions, demo answers).

Each line is in the ARC format lm-eval's ARC tasks read: ``{"id", "question", "choices": {"text": [4],
"label": ["A", "B", "C", "D"]}, "answerKey", "topic", "cluster"}``; ``cluster`` is the passage for reading
items and the item's own id otherwise. Korean text is NFC.

    python data/demo/make_eval_data.py           # rewrites data/demo/eval_{en,ko}.jsonl deterministically
    python data/demo/make_eval_data.py OUT_DIR   # the same files, elsewhere
"""

import json
import random
import sys
import unicodedata
from pathlib import Path

from make_demo_data import ACTIONS, SUBJECTS, WHEN, english, has_final_consonant, korean

LABELS = ["A", "B", "C", "D"]

# English base form of each demo verb (for "What does the teacher eat?").
BASE = {"reads": "read", "writes": "write", "sings": "sing", "eats": "eat", "drinks": "drink", "washes": "wash",
        "does": "do", "watches": "watch", "buys": "buy", "plays": "play", "draws": "draw", "studies": "study",
        "makes": "make"}

# The verbs a demo object can plausibly take, whatever the sentence it came from says. A distractor verb (or
# object) must lie outside these sets, so that every item has exactly one right answer.
PLAUSIBLE = {
    "a book": {"reads", "writes", "buys", "studies", "makes", "draws"},
    "a newspaper": {"reads", "buys", "writes", "makes"},
    "a letter": {"writes", "reads", "buys", "draws"},
    "a song": {"sings", "writes", "plays", "makes", "studies", "buys"},
    "an apple": {"eats", "buys", "draws", "washes"},
    "bread": {"eats", "buys", "makes", "draws"},
    "rice": {"eats", "buys", "makes", "washes"},
    "water": {"drinks", "buys"},
    "coffee": {"drinks", "buys", "makes"},
    "milk": {"drinks", "buys"},
    "a car": {"washes", "buys", "draws", "makes"},
    "the dishes": {"does", "washes", "buys", "makes", "draws"},
    "a movie": {"watches", "makes", "buys", "writes"},
    "the news": {"watches", "reads", "writes", "makes"},
    "a shirt": {"buys", "washes", "makes", "draws"},
    "shoes": {"buys", "washes", "makes", "draws"},
    "flowers": {"buys", "draws", "washes"},
    "soccer": {"plays", "watches", "studies"},
    "the piano": {"plays", "buys", "studies", "draws", "washes"},
    "a picture": {"draws", "buys", "makes", "watches"},
    "English": {"studies", "reads", "writes"},
    "Korean": {"studies", "reads", "writes"},
    "a cake": {"makes", "eats", "buys", "draws"},
}
# Verbs offered as choices in the "verbs" items: one Korean form each ("plays" is 해요 or 쳐요, "does" is 해요:
# left out, so that a choice never names two verbs).
VERB_CHOICES = [("reads", "읽어요"), ("writes", "써요"), ("sings", "불러요"), ("eats", "먹어요"), ("drinks", "마셔요"),
                ("washes", "씻어요"), ("watches", "봐요"), ("buys", "사요"), ("draws", "그려요"),
                ("studies", "공부해요"), ("makes", "만들어요")]
# "Which of these do people <verb>?": the Korean adnominal form of each verb asked about.
# ("draws" is not asked: almost anything can be drawn.)
CATEGORY_VERBS = {"drinks": "마시는", "eats": "먹는", "reads": "읽는", "watches": "보는", "sings": "부르는",
                  "studies": "공부하는"}
# (English question, Korean question, English answer): the answer is one of the demo's subjects.
ROLES = [
    ("Who teaches students at school?", "학교에서 학생들을 가르치는 사람은 누구입니까?", "the teacher"),
    ("Who gives homework to students?", "학생들에게 숙제를 내 주는 사람은 누구입니까?", "the teacher"),
    ("Who takes care of sick people?", "아픈 사람을 돌보는 사람은 누구입니까?", "the doctor"),
    ("Who works in a hospital and treats patients?", "병원에서 환자를 치료하는 사람은 누구입니까?", "the doctor"),
    ("Who cooks food in a restaurant?", "식당에서 음식을 만드는 사람은 누구입니까?", "the cook"),
    ("Who works in the kitchen of a restaurant?", "식당 주방에서 일하는 사람은 누구입니까?", "the cook"),
    ("Who grows rice in the fields?", "논에서 벼를 기르는 사람은 누구입니까?", "the farmer"),
    ("Who grows vegetables on a farm?", "농장에서 채소를 기르는 사람은 누구입니까?", "the farmer"),
    ("Who drives a bus for a living?", "버스를 운전하는 일을 하는 사람은 누구입니까?", "the driver"),
    ("Who takes passengers to the airport by taxi?", "택시로 손님을 공항에 데려다주는 사람은 누구입니까?",
     "the driver"),
    ("Who sings on a stage?", "무대에서 노래하는 사람은 누구입니까?", "the singer"),
    ("Whose job is to sing songs?", "노래를 부르는 것이 직업인 사람은 누구입니까?", "the singer"),
    ("Who goes to school to learn?", "배우러 학교에 다니는 사람은 누구입니까?", "the student"),
    ("Who takes exams at the end of the term?", "학기 말에 시험을 보는 사람은 누구입니까?", "the student"),
]
ROLE_CHOICES = ["the teacher", "the student", "the doctor", "the cook", "the farmer", "the driver", "the singer"]
# (English question, Korean question, English answer): the answer is one of the demo's places.
PLACES = [
    ("Where do people borrow books?", "사람들은 어디에서 책을 빌립니까?", "in the library"),
    ("Where do people return the books they borrowed?", "사람들은 빌린 책을 어디에서 반납합니까?", "in the library"),
    ("Where do children have classes with a teacher?", "아이들은 어디에서 선생님과 수업을 합니까?", "at school"),
    ("Where do students take their exams?", "학생들은 어디에서 시험을 봅니까?", "at school"),
    ("Where does a family usually eat dinner together?", "가족은 보통 어디에서 함께 저녁을 먹습니까?", "at home"),
    ("Where do people sleep in their own bed?", "사람들은 어디에서 자기 침대에 누워 잡니까?", "at home"),
    ("Where do children ride the swings and slides?", "아이들은 어디에서 그네와 미끄럼틀을 탑니까?", "in the park"),
    ("Where do people have a picnic on the grass?", "사람들은 어디에서 잔디 위에 앉아 소풍을 즐깁니까?", "in the park"),
    ("Where do people buy fresh fish from many sellers?", "사람들은 어디에서 여러 상인에게 싱싱한 생선을 삽니까?",
     "at the market"),
    ("Where do sellers set up stalls to sell vegetables?", "상인들은 어디에서 가판대를 차리고 채소를 팝니까?",
     "at the market"),
]

KO_SUBJECT = dict(SUBJECTS)
KO_WHEN = dict(WHEN)
PLACE_NAMES = [w for w, ko in WHEN if ko.endswith("에서")]
OBJECTS = {obj: (ko, verb, ko_verb) for obj, ko, verb, ko_verb in ACTIONS}
KO_OBJECT = {obj: ko for obj, (ko, _, _) in OBJECTS.items()}


def topic_particle(word: str) -> str:
    return "은" if has_final_consonant(word) else "는"


def object_particle(word: str) -> str:
    return "을" if has_final_consonant(word) else "를"


def item(rng: random.Random, topic: str, question: tuple[str, str], right: tuple[str, str],
         wrong: list[tuple[str, str]]) -> tuple[dict, dict]:
    """The English and Korean lines of one item: the right choice and three wrong ones, shuffled together, so
    the gold answer has the same position in both languages."""
    choices = [right] + wrong
    assert len(choices) == 4 and all(len({c[lang] for c in choices}) == 4 for lang in (0, 1)), choices
    order = list(range(4))
    rng.shuffle(order)
    gold = order.index(0)
    lines = []
    for lang in (0, 1):
        lines.append({
            "question": unicodedata.normalize("NFC", question[lang]),
            "choices": {"text": [unicodedata.normalize("NFC", choices[k][lang]) for k in order], "label": LABELS},
            "answerKey": LABELS[gold], "topic": topic,
        })
    return lines[0], lines[1]


def reading_items(rng: random.Random, n_passages: int) -> list[tuple[str, dict, dict]]:
    """Passages of three demo sentences (three subjects, three objects), one question on each sentence."""
    out = []
    objects = [a for a in ACTIONS if a[0] != "the dishes"]  # "What does my mother do?" has no object answer
    for p in range(n_passages):
        subjects = rng.sample(SUBJECTS, 3)
        actions = rng.sample(objects, 3)
        whens = [rng.choice(WHEN) for _ in range(3)]
        en_passage = " ".join(english(s[0], w[0], a[0], a[2]) for s, w, a in zip(subjects, whens, actions))
        ko_passage = " ".join(korean(s[1], w[1], a[1], a[3]) for s, w, a in zip(subjects, whens, actions))
        for q, ((s_en, s_ko), (w_en, w_ko), (o_en, o_ko, v_en, v_ko)) in enumerate(zip(subjects, whens, actions)):
            kinds = ["what", "who"] + (["where"] if w_en in PLACE_NAMES else [])
            kind = rng.choice(kinds)
            if kind == "what":  # the other objects of the passage, and one the verb could also take
                en_q = f"What does {s_en} {BASE[v_en]}?"
                ko_q = f"{s_ko}{topic_particle(s_ko)} 무엇을 {v_ko}?"
                others = [a[0] for a in actions if a[0] != o_en]
                spare = sorted(o for o in OBJECTS if o not in others and o != o_en and v_en in PLAUSIBLE[o])
                if not spare:
                    spare = sorted(o for o in OBJECTS if o not in others and o != o_en)
                wrong = others + [rng.choice(spare)]
                right, wrong = (o_en, o_ko), [(o, KO_OBJECT[o]) for o in wrong]
            elif kind == "who":  # the passage's other subjects, and one more
                en_q = f"Who {v_en} {o_en}?"
                ko_q = f"누가 {o_ko}{object_particle(o_ko)} {v_ko}?"
                others = [s for s in subjects if s[0] != s_en]
                wrong = others + [rng.choice([s for s in SUBJECTS if s not in subjects])]
                right = (s_en, s_ko)
            else:
                en_q = f"Where does {s_en} {BASE[v_en]} {o_en}?"
                ko_q = f"{s_ko}{topic_particle(s_ko)} 어디에서 {o_ko}{object_particle(o_ko)} {v_ko}?"
                wrong = [(w, KO_WHEN[w]) for w in rng.sample([w for w in PLACE_NAMES if w != w_en], 3)]
                right = (w_en, w_ko)
            en, ko = item(rng, "reading", (f"{en_passage}\n{en_q}", f"{ko_passage}\n{ko_q}"), right, wrong)
            out.append((f"koen-demo-passage-{p:02d}", en, ko))
    return out


def verb_items(rng: random.Random, n: int) -> list[tuple[str, dict, dict]]:
    """A demo sentence with its verb blanked; three verbs the object cannot take as the other choices."""
    out = []
    objects = [a for a in ACTIONS if a[2] in dict(VERB_CHOICES)]
    for _ in range(n):
        (s_en, s_ko), (w_en, w_ko) = rng.choice(SUBJECTS), rng.choice(WHEN)
        o_en, o_ko, v_en, v_ko = rng.choice(objects)
        wrong = rng.sample([v for v in VERB_CHOICES if v[0] not in PLAUSIBLE[o_en]], 3)
        en_q = f"Which word fills the blank? {english(s_en, w_en, o_en, '___')}"
        ko_q = f"빈칸에 알맞은 말은 무엇입니까? {korean(s_ko, w_ko, o_ko, '___')}"
        out.append((None, *item(rng, "verbs", (en_q, ko_q), (v_en, v_ko), wrong)))
    return out


def category_items(rng: random.Random) -> list[tuple[str, dict, dict]]:
    """"Which of these do people <verb>?" for every object the verb can take; three objects it cannot."""
    out = []
    for verb, adnominal in CATEGORY_VERBS.items():
        for obj in OBJECTS:
            # "그림을 보는" is good Korean, but "people watch a picture" is not good English: not asked
            if verb not in PLAUSIBLE[obj] or (verb, obj) == ("watches", "a picture"):
                continue
            wrong = rng.sample(sorted(o for o in OBJECTS if verb not in PLAUSIBLE[o]), 3)
            en_q = f"Which of these do people {BASE[verb]}?"
            ko_q = f"다음 중 사람들이 {adnominal} 것은 무엇입니까?"
            out.append((None, *item(rng, "categories", (en_q, ko_q), (obj, KO_OBJECT[obj]),
                                    [(o, KO_OBJECT[o]) for o in wrong])))
    return out


def listed_items(rng: random.Random, topic: str, questions: list, answers: list[str], ko: dict) -> list:
    """Hand-written questions whose answer is one of ``answers`` (English; ``ko`` translates)."""
    out = []
    for en_q, ko_q, right in questions:
        wrong = rng.sample([a for a in answers if a != right], 3)
        out.append((None, *item(rng, topic, (en_q, ko_q), (right, ko[right]), [(a, ko[a]) for a in wrong])))
    return out


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(20261204)
    rows = (reading_items(rng, 20) + verb_items(rng, 50) + category_items(rng)
            + listed_items(rng, "roles", ROLES, ROLE_CHOICES, KO_SUBJECT)
            + listed_items(rng, "places", PLACES, PLACE_NAMES, KO_WHEN))
    counts: dict[str, int] = {}
    en_rows, ko_rows = [], []
    for cluster, en, ko in rows:
        topic = en["topic"]
        counts[topic] = counts.get(topic, 0) + 1
        item_id = f"koen-demo-{topic}-{counts[topic]:03d}"
        for line, rows_out in ((en, en_rows), (ko, ko_rows)):
            rows_out.append({"id": item_id, **line, "cluster": cluster or item_id})
    order = list(range(len(en_rows)))
    rng.shuffle(order)  # mixed topics, so that --limit N takes a bit of each
    return [en_rows[i] for i in order], [ko_rows[i] for i in order]


def main(out_dir: str | None = None) -> None:
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    en_rows, ko_rows = build()
    for name, rows in (("eval_en.jsonl", en_rows), ("eval_ko.jsonl", ko_rows)):
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{out / name}: {len(rows)} items")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
