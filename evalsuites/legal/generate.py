"""Rebuild legal/items.jsonl: short contract passages and one question each, in six
categories that test reading precision rather than legal knowledge: obligation vs
permission vs prohibition, negation and exceptions, deadline arithmetic, party roles,
applying a rule to facts, and defined terms. Every item has a short answer and choices.

    python evalsuites/legal/generate.py [--seed 20240602] [--out DIR]
"""
from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qfid.evals.itemgen import generator_main, tiered_cases, with_choices

SEED = 20240602
PER_TIER = 24
YES_NO = "Answer yes or no."
DEONTIC = ("required", "permitted but not required", "prohibited")
COMPANIES = ["Alder Holdings Ltd", "Brightwater Inc", "Cobalt Systems LLC", "Delta Freight GmbH", "Evergreen Estates Ltd",
             "Fairmont Media Inc", "Granite Works LLC", "Harbor Analytics Ltd", "Ironwood Supplies Inc", "Juniper Labs LLC"]
PEOPLE = ["Dana Reyes", "Omar Haddad", "Mei Lin", "Priya Nair", "Lukas Weber", "Sofia Rossi", "Kwame Mensah", "Anna Novak"]


@dataclass(frozen=True)
class Action:
    """Something a party may be bound to do, as a base form and a gerund."""

    actor: str
    base: str
    gerund: str


ACTIONS = [
    Action("Tenant", "sublet the Premises", "subletting the Premises"),
    Action("Tenant", "keep pets on the Premises", "keeping pets on the Premises"),
    Action("Tenant", "paint the interior walls", "painting the interior walls"),
    Action("Landlord", "enter the Premises for an inspection", "entering the Premises for an inspection"),
    Action("Licensee", "sublicense the Software", "sublicensing the Software"),
    Action("Licensee", "modify the source code", "modifying the source code"),
    Action("Licensor", "audit the Licensee's records", "auditing the Licensee's records"),
    Action("Supplier", "use subcontractors", "using subcontractors"),
    Action("Supplier", "deliver the Goods in instalments", "delivering the Goods in instalments"),
    Action("Buyer", "inspect the Goods on arrival", "inspecting the Goods on arrival"),
    Action("Employee", "work for a competitor", "working for a competitor"),
    Action("Employee", "work from home on Fridays", "working from home on Fridays"),
    Action("Employer", "change the Employee's place of work", "changing the Employee's place of work"),
    Action("Borrower", "repay the Loan early", "repaying the Loan early"),
    Action("Lender", "assign the Loan to a third party", "assigning the Loan to a third party"),
    Action("Contractor", "issue interim invoices", "issuing interim invoices"),
]
# (tier, phrase, meaning): how contracts say "must", "may" and "must not", plainly and less so.
MODALS = [
    (1, "shall {base}", "required"), (1, "may {base}", "permitted but not required"), (1, "shall not {base}", "prohibited"),
    (2, "must {base}", "required"), (2, "is entitled to {base}", "permitted but not required"), (2, "must not {base}", "prohibited"),
    (2, "is required to {base}", "required"), (2, "has the right to {base}", "permitted but not required"),
    (2, "is prohibited from {gerund}", "prohibited"), (3, "undertakes to {base}", "required"),
    (3, "shall not be required to {base}, but may do so", "permitted but not required"),
    (3, "may not {base}", "prohibited"), (3, "shall in no circumstances {base}", "prohibited"),
    (3, "is under no obligation to {base} but is free to do so", "permitted but not required"),
    (3, "shall be obliged to {base}", "required"),
]


@dataclass
class Case:
    passage: str
    question: str
    hint: str
    answer: str
    choices: list[str]


def deontic(rng: random.Random, tier: int) -> Case:
    action = rng.choice(ACTIONS)
    phrase, meaning = rng.choice([(p, m) for t, p, m in MODALS if t == tier])
    clause = rng.randrange(2, 15)
    text = f"{clause}.{rng.randrange(1, 6)} The {action.actor} " + phrase.format(base=action.base, gerund=action.gerund) + "."
    if tier > 1:
        other = rng.choice([a for a in ACTIONS if a.actor != action.actor])
        other_phrase, _ = rng.choice([(p, m) for t, p, m in MODALS if m != meaning])
        extra = f"{clause}.{rng.randrange(6, 9)} The {other.actor} " + other_phrase.format(base=other.base, gerund=other.gerund) + "."
        text = f"{text}\n{extra}" if rng.random() < 0.5 else f"{extra}\n{text}"
    question = f"Under this text, is the {action.actor}'s {action.gerund} required, permitted but not required, or prohibited?"
    return Case(text, question, "Answer with one of: required, permitted but not required, prohibited.", meaning, list(DEONTIC))


# Each: (tier, rule, question, facts that make the answer yes, facts that make it no).
EXCEPTIONS = [
    (1, "The Tenant shall not sublet the Premises unless the Landlord has given prior written consent.",
     "May the Tenant sublet the Premises?", ["The Landlord gave written consent before the sublease began."],
     ["The Landlord has not given consent.", "The Landlord agreed by phone but never in writing."]),
    (1, "The Employee may not disclose the Employer's client list unless required to do so by law.",
     "May the Employee disclose the client list?", ["A court order requires the Employee to produce the client list."],
     ["A journalist asked the Employee for the client list.", "A former colleague asked to see the client list."]),
    (1, "The Supplier must deliver the Goods by 30 June unless the Buyer agrees in writing to a later date.",
     "May the Supplier deliver the Goods on 15 July?", ["The Buyer agreed in writing to delivery by 20 July."],
     ["The Buyer did not agree to any later date.", "The Buyer's employee said on the phone that July would be fine."]),
    (2, "The Supplier may not terminate this Agreement except for a material breach by the Buyer that is not remedied within 30 days of written notice.",
     "May the Supplier terminate the Agreement?",
     ["The Buyer materially breached the Agreement and, 45 days after written notice, has still not remedied the breach."],
     ["The Buyer materially breached the Agreement and remedied the breach 10 days after written notice.",
      "The Buyer committed a minor breach that has not been remedied."]),
    (2, "No refund shall be given for tickets, except where the event is cancelled and the ticket holder asks for a refund within 14 days of the cancellation.",
     "Is the ticket holder entitled to a refund?", ["The event was cancelled and the ticket holder asked for a refund 5 days later."],
     ["The event was cancelled and the ticket holder asked for a refund 20 days later.",
      "The event went ahead and the ticket holder could not attend."]),
    (2, "The Licensee shall not use the Software outside Canada, other than for demonstrations to prospective customers lasting no more than 10 days.",
     "Is the Licensee's use of the Software permitted?", ["The Licensee used the Software in Chile for a 3-day demonstration to a prospective customer."],
     ["The Licensee used the Software in Chile for a 3-week demonstration to a prospective customer.",
      "The Licensee ran its own payroll with the Software in Chile for 2 days."]),
    (3, "Clause 7: The Tenant shall not keep animals on the Premises.\nClause 12: Notwithstanding clause 7, the Tenant may keep one assistance dog on the Premises.",
     "Is the Tenant in breach of the lease?", ["The Tenant keeps a cat on the Premises.", "The Tenant keeps two assistance dogs on the Premises."],
     ["The Tenant keeps one assistance dog on the Premises.", "The Tenant keeps no animals on the Premises."]),
    (3, "Clause 4: Either party may terminate this Agreement on 60 days' notice.\nClause 9: Notwithstanding clause 4, neither party may terminate this Agreement during the first year after the Effective Date.",
     "Was the termination notice valid?", ["Eighteen months after the Effective Date, a party gave 60 days' notice of termination."],
     ["Eight months after the Effective Date, a party gave 60 days' notice of termination.",
      "Two years after the Effective Date, a party gave 30 days' notice of termination."]),
    (3, "The Employee shall not accept gifts from suppliers, provided that this clause does not apply to gifts worth less than $50 that are recorded in the gift register.",
     "Has the Employee breached this clause?", ["The Employee accepted a $30 gift from a supplier and did not record it.",
                                                "The Employee accepted a $120 gift from a supplier and recorded it."],
     ["The Employee accepted a $30 gift from a supplier and recorded it in the gift register.",
      "The Employee refused a $200 gift from a supplier."]),
]


def exceptions(rng: random.Random, tier: int) -> Case:
    _, rule, question, yes_facts, no_facts = rng.choice([e for e in EXCEPTIONS if e[0] == tier])
    answer = rng.choice(["yes", "no"])
    facts = rng.choice(yes_facts if answer == "yes" else no_facts)
    return Case(f"{rule}\nFacts: {facts}", question, YES_NO, answer, ["yes", "no"])


def _date(day: dt.date, weekday: bool = False) -> str:
    text = f"{day.day} {day:%B %Y}"
    return f"{day:%A}, {text}" if weekday else text


def _add_business_days(start: dt.date, days: int) -> dt.date:
    current = start
    while days:
        current += dt.timedelta(days=1)
        days -= current.weekday() < 5
    return current


def _roll_to_monday(day: dt.date) -> dt.date:
    return day + dt.timedelta(days=(7 - day.weekday()) % 7) if day.weekday() >= 5 else day


def deadlines(rng: random.Random, tier: int) -> Case:
    start = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(0, 700))
    event = rng.choice(["the date of delivery", "the date of the invoice", "the Effective Date", "the date of the notice"])
    days = rng.choice([7, 10, 14, 15, 21, 28, 30, 45, 60, 90])
    calendar = start + dt.timedelta(days=days)
    if tier == 1:
        rule = f"Any claim must be made within {days} days after {event}. {event[0].upper() + event[1:]} was {_date(start)}."
        answer, wrong = calendar, [calendar - dt.timedelta(days=1), calendar + dt.timedelta(days=1), start + dt.timedelta(days=days + 30)]
    elif tier == 2:
        while calendar.weekday() < 5:  # tier 2 is about the weekend roll, so make it matter
            start += dt.timedelta(days=1)
            calendar = start + dt.timedelta(days=days)
        rule = (f"Payment is due {days} days after {event}; if that day is a Saturday or Sunday, payment is due on the "
                f"following Monday. {event[0].upper() + event[1:]} was {_date(start, weekday=True)}.")
        answer, wrong = _roll_to_monday(calendar), [calendar, calendar - dt.timedelta(days=calendar.weekday() - 4), calendar + dt.timedelta(days=1)]
    else:
        days, event = rng.choice([3, 5, 7, 10, 12, 15, 20]), "the date of delivery"
        answer = _add_business_days(start, days)
        rule = (f"Notice of a defect must be given within {days} Business Days after {event}. \"Business Day\" means Monday "
                f"to Friday; there are no public holidays in this period. {event[0].upper() + event[1:]} was {_date(start, weekday=True)}.")
        wrong = [start + dt.timedelta(days=days), answer - dt.timedelta(days=1), answer + dt.timedelta(days=1), _add_business_days(start, days + 1)]
    question = "What is the last day to act in time?"
    texts = [_date(answer)] + [_date(w) for w in wrong]
    return Case(rule, question, "Answer with a date such as 5 January 2024.", texts[0], texts)


# (role A, role B, who does what): the named duty belongs to role B unless flagged "A".
ROLE_PAIRS = [
    ("Licensor", "Licensee", "pay the royalties", "B"), ("Licensor", "Licensee", "provide software updates", "A"),
    ("Landlord", "Tenant", "pay the rent", "B"), ("Landlord", "Tenant", "insure the building", "A"),
    ("Supplier", "Buyer", "deliver the Goods", "A"), ("Supplier", "Buyer", "pay the invoice within 30 days", "B"),
    ("Lender", "Borrower", "repay the Loan", "B"), ("Lender", "Borrower", "advance the Loan funds", "A"),
    ("Contractor", "Client", "obtain the building permits", "A"), ("Contractor", "Client", "provide access to the site", "B"),
]


def party_roles(rng: random.Random, tier: int) -> Case:
    role_a, role_b, duty, owner = rng.choice(ROLE_PAIRS)
    a, b, c, d = rng.sample(COMPANIES, 4)
    duty_role = role_a if owner == "A" else role_b
    parties = f'This Agreement is made between {a} (the "{role_a}") and {b} (the "{role_b}")'
    answer = a if owner == "A" else b
    if tier == 1:
        passage = f"{parties}.\nClause 3: The {duty_role} shall {duty}."
    elif tier == 2:
        passage = (f'{parties}, with {c} as guarantor (the "Guarantor").\nClause 3: The {duty_role} shall {duty}.\n'
                   f"Clause 8: If the {duty_role} fails to {duty}, the Guarantor shall do so within 10 days of a written demand.")
        if rng.random() < 0.5:
            return Case(passage, f"Under clause 8, which company must {duty} if the {duty_role} fails to do so?",
                        "Answer with the company's name.", c, [c, a, b, d])
    else:
        passage = (f"{parties}.\nClause 3: The {duty_role} shall {duty}.\nClause 14: On 1 March 2025 the {duty_role} assigned "
                   f"all of its rights and obligations under this Agreement to {c}, and the other party consented to the assignment.")
        return Case(passage, f"After 1 March 2025, which company must {duty}?", "Answer with the company's name.", c, [c, a, b, d])
    return Case(passage, f"Which company must {duty}?", "Answer with the company's name.", answer, [answer, a if answer == b else b, c, d])


def rule_application(rng: random.Random, tier: int) -> Case:
    """A rule of `tier` conditions (the third an exception) applied to facts; yes/no kept balanced."""
    person, wanted = rng.choice(PEOPLE), rng.random() < 0.5
    make = rng.choice([_leave_rule, _refund_rule, _late_fee_rule, _warranty_rule])
    for _ in range(100):  # conjunctive rules lean to "no"; redraw the facts until the answer is the wanted one
        question, parts = make(rng, person)
        used = parts[:tier]
        if all(ok for _, _, ok in used) == wanted:
            break
    else:
        raise RuntimeError(f"{make.__name__} drew no {'yes' if wanted else 'no'} case in 100 tries")
    rule, facts = "".join(r for r, _, _ in used) + ".", "".join(f for _, f, _ in used) + "."
    return Case(f"Rule: {rule}\nFacts: {facts}", question, YES_NO, "yes" if wanted else "no", ["yes", "no"])


def _near(rng: random.Random, threshold: int, spread: int) -> int:
    return max(1, threshold + rng.choice([-1, 1]) * rng.randrange(1, spread + 1))


# Each rule: (question, [(rule text, facts text, condition met)] for tiers 1, 2, 3); every
# part is drawn so the parts line up, and a tier-n item uses the first n.
def _leave_rule(rng, person):
    months, hours, probation = rng.choice([6, 12, 18]), rng.choice([15, 20, 25]), rng.random() < 0.35
    worked, weekly = _near(rng, months, 5), _near(rng, hours, 6)
    return f"Is {person} entitled to paid parental leave?", [
        (f"An employee is entitled to paid parental leave if the employee has worked for the employer for at least {months} months",
         f"{person} has worked for the employer for {worked} months", worked >= months),
        (f" and works at least {hours} hours a week", f" and works {weekly} hours a week", weekly >= hours),
        (", unless the employee is still in a probation period",
         ", and " + ("is still on probation" if probation else "has completed probation"), not probation),
    ]


def _refund_rule(rng, person):
    window, unused, clearance = rng.choice([14, 30, 60]), rng.random() < 0.6, rng.random() < 0.35
    days = _near(rng, window, 10)
    return f"Is {person} entitled to a full refund?", [
        (f"A customer may return a product for a full refund within {window} days of purchase",
         f"{person} returned the product {days} days after buying it", days <= window),
        (" if the product is unused", " and it had " + ("never been used" if unused else "been used twice"), unused),
        ("; products bought in a clearance sale cannot be returned",
         f"; it was bought {'in a clearance sale' if clearance else 'at full price'}", not clearance),
    ]


def _late_fee_rule(rng, person):
    grace, minimum, first = rng.choice([5, 7, 10]), rng.choice([100, 250]), rng.random() < 0.35
    late, owed = _near(rng, grace, 4), _near(rng, minimum, 80)
    return f"Is {person} charged a late fee?", [
        (f"A late fee is charged if rent is paid more than {grace} days after the due date",
         f"{person} paid the rent {late} days after the due date", late > grace),
        (f" and the unpaid amount is at least ${minimum}", f" and the unpaid amount was ${owed}", owed >= minimum),
        (", but no late fee is charged for the first late payment in any calendar year",
         "; it was " + ("the first late payment this year" if first else "the third late payment this year"), not first),
    ]


def _warranty_rule(rng, person):
    months, registered, misuse = rng.choice([12, 24, 36]), rng.random() < 0.6, rng.random() < 0.35
    age = _near(rng, months, 8)
    return f"Will the manufacturer repair {person}'s appliance free of charge?", [
        (f"The manufacturer will repair a defective appliance free of charge within {months} months of purchase",
         f"{person}'s appliance developed a defect {age} months after purchase", age <= months),
        (", provided the appliance was registered within 30 days of purchase",
         " and was " + ("registered 12 days after purchase" if registered else "registered 3 months after purchase"), registered),
        (", except for damage caused by misuse", "; the defect was " + ("caused by dropping the appliance" if misuse else "a faulty motor"), not misuse),
    ]


def definitions(rng: random.Random, tier: int) -> Case:
    make = {1: rng.choice([_territory, _business_day]), 2: rng.choice([_affiliate, _business_day]), 3: _confidential}[tier]
    definition, question, facts, answer = make(rng)
    passage = definition + (f"\nFacts: {facts}" if facts else "")
    return Case(passage, question, YES_NO, "yes" if answer else "no", ["yes", "no"])


def _territory(rng):
    countries = ["France", "Germany", "Spain", "Italy", "Portugal", "Belgium", "Austria", "Poland"]
    listed = rng.sample(countries, 3)
    asked = rng.choice(listed) if rng.random() < 0.5 else rng.choice([c for c in countries if c not in listed])
    definition = f'"Territory" means {listed[0]}, {listed[1]} and {listed[2]}.'
    return definition, f"Is a sale to a customer in {asked} a sale in the Territory?", "", asked in listed


def _business_day(rng):
    city = rng.choice(["London", "Nairobi", "Toronto", "Singapore"])
    day = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(0, 700))
    holiday = rng.random() < 0.3 and day.weekday() < 5
    definition = f'"Business Day" means a day other than a Saturday, a Sunday or a public holiday in {city}.'
    facts = f"{_date(day, weekday=True)} " + ("is a public holiday in " if holiday else "is not a public holiday in ") + f"{city}."
    return definition, f"Is {_date(day)} a Business Day?", facts, day.weekday() < 5 and not holiday


def _affiliate(rng):
    a, b = rng.sample(COMPANIES, 2)
    share = rng.choice([20, 35, 45, 49, 50, 51, 55, 60, 75, 100])
    definition = ('"Affiliate" means an entity that controls, is controlled by, or is under common control with a party, '
                  'where "control" means owning more than 50% of the voting shares.')
    return definition, f"Is {b} an Affiliate of {a}?", f"{a} owns {share}% of the voting shares of {b}.", share > 50


def _confidential(rng):
    item = rng.choice(["the pricing list", "the customer database", "the product roadmap", "the supplier contract"])
    cases = [
        ("the Discloser sent it to the Recipient by email, marked confidential", True),
        ("the Discloser showed it to the Recipient at a private meeting", True),
        ("the Recipient read it on the Discloser's public website", False),
        ("the Recipient already had it from its own research before the Agreement was signed", False),
        ("it was published in a trade magazine before the Discloser shared it", False),
    ]
    how, answer = rng.choice(cases)
    definition = ('"Confidential Information" means all non-public information disclosed by the Discloser to the Recipient, '
                  "but does not include information that (a) is or becomes publicly available other than through the "
                  "Recipient's breach, or (b) was already known to the Recipient before disclosure.")
    return definition, f"Is {item} Confidential Information?", f"As to {item}: {how}.", answer


CATEGORIES: dict[str, Callable[[random.Random, int], Case]] = {
    "obligation_permission_prohibition": deontic,
    "negation_exceptions": exceptions,
    "deadline_arithmetic": deadlines,
    "party_roles": party_roles,
    "rule_application": rule_application,
    "defined_terms": definitions,
}


def build(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for number, (category, tier, case) in enumerate(tiered_cases(rng, CATEGORIES, PER_TIER), start=1):
        choices, label = with_choices(rng, case.answer, case.choices, n_choices=min(4, len(set(case.choices))))
        rows.append({"id": f"leg-{number:04d}", "category": category, "lang": "en", "difficulty": tier,
                     "fields": {"passage": case.passage, "question": case.question, "answer_hint": case.hint},
                     "answer": case.answer, "choices": choices, "label": label})
    return rows


if __name__ == "__main__":
    generator_main(build, SEED, Path(__file__).resolve().parent)
