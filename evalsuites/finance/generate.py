"""Rebuild finance/items.jsonl: nine categories of everyday financial arithmetic, three
difficulty tiers each, numbers written the way reports write them ($1,234.56, 3.5%).

Every item keeps the inputs it was computed from in `fields.inputs` (with `op` naming the
formula), so tests/unit/test_suites.py can recompute each answer independently.

    python evalsuites/finance/generate.py [--seed 20240601] [--out DIR]
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qfid.evals.itemgen import (
    fmt_money, fmt_number, fmt_pct, generator_main, numeric_distractors, round_half_up, tiered_cases, with_choices,
)

SEED = 20240601
PER_TIER = 24
COMPANIES = ["Northwind Traders", "Acme Corp", "Blue Harbor Foods", "Keystone Logistics", "Silverline Retail",
             "Orchid Pharma", "Granite Bank", "Summit Energy", "Lakeside Hotels", "Pioneer Software"]
PEOPLE = ["Maria", "James", "Aisha", "Chen", "Olga", "Ravi", "Lucia", "Tom", "Amara", "Kenji"]
METRICS = ["revenue", "net income", "operating profit", "monthly sales", "average order value"]
FREQUENCIES = {1: "annually", 2: "semiannually", 4: "quarterly", 12: "monthly"}
CENTS = " Round to the nearest cent."
PCT = " Give the answer in percent, rounded to two decimal places."


@dataclass
class Case:
    """One generated problem: its text, the inputs it came from, the exact answer, the
    values typical mistakes give (for distractors) and how answers are written."""

    question: str
    inputs: dict
    answer: float
    mistakes: list[float] = field(default_factory=list)
    fmt: Callable[[float], str] = fmt_money
    places: int = 2


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _money(rng: random.Random, low: float, high: float, step: float = 0.01) -> float:
    return round_half_up(rng.randrange(round(low / step), round(high / step)) * step, 2)


def _rate(rng: random.Random, low: float, high: float, step: float = 0.25) -> float:
    return round(rng.randrange(round(low / step), round(high / step) + 1) * step, 3)


def percent_change(rng: random.Random, tier: int) -> Case:
    who, metric = rng.choice(COMPANIES), rng.choice(METRICS)
    if tier == 3:
        return _chained_change(rng, who)
    if tier == 1:
        old = rng.randrange(100, 5000) * 10
        new = round(old * (1 + rng.uniform(0.02, 0.6)))
        text = f"{_possessive(who)} {metric} rose from {fmt_money(old, places=0)} to {fmt_money(new, places=0)}. What was the percent change?{PCT}"
    else:
        old = _money(rng, 1_000, 250_000)
        change = rng.choice([-1, 1]) * rng.uniform(0.03, 0.45)
        new = round_half_up(old * (1 + change), 2)
        year = rng.randrange(2015, 2024)
        text = (f"From {year} to {year + 1}, {_possessive(who)} {metric} went from {fmt_money(old)} to {fmt_money(new)}. "
                f"By what percent did it change? Use a negative number for a decrease.{PCT}")
    answer = (new - old) / old * 100
    return Case(text, {"op": "pct_change", "old": old, "new": new}, answer,
                [(new - old) / new * 100, new / old * 100, -answer, answer / 10], fmt_pct)


def _chained_change(rng: random.Random, who: str) -> Case:
    changes = [rng.choice([-1, 1]) * _rate(rng, 2, 35, 0.5) for _ in range(rng.choice([2, 3]))]
    quarters = ["first", "second", "third"]
    steps = [f"{'rose' if c > 0 else 'fell'} {fmt_pct(abs(c))} in the {q} quarter" for c, q in zip(changes, quarters)]
    text = (f"{_possessive(who)} share price {', then '.join(steps)}. What was the total percent change over the "
            f"{['', '', 'two', 'three'][len(changes)]} quarters? Use a negative number for a net decrease.{PCT}")
    growth = 1.0
    for change in changes:
        growth *= 1 + change / 100
    answer = (growth - 1) * 100
    return Case(text, {"op": "chained_pct", "changes_pct": changes}, answer, [sum(changes), -answer, sum(changes) / len(changes)], fmt_pct)


def simple_interest(rng: random.Random, tier: int) -> Case:
    person, principal, rate = rng.choice(PEOPLE), rng.randrange(10, 500) * 100.0, _rate(rng, 1.5, 9.5)
    if tier == 1:
        years = rng.randrange(2, 11)
        answer = principal * rate / 100 * years
        text = (f"{person} deposits {fmt_money(principal)} in an account that pays simple interest of {fmt_pct(rate)} per year. "
                f"How much interest does the account earn in {years} years?{CENTS}")
        return Case(text, {"op": "simple_interest", "principal": principal, "rate_pct": rate, "years": years}, answer,
                    [principal * ((1 + rate / 100) ** years - 1), principal * rate / 100, principal + answer])
    if tier == 2:
        months = rng.choice([3, 4, 5, 7, 8, 9, 10, 11, 15, 18])
        answer = principal * rate / 100 * months / 12
        text = (f"A short-term loan of {fmt_money(principal)} carries simple interest at {fmt_pct(rate)} per year. "
                f"How much interest is owed after {months} months?{CENTS}")
        return Case(text, {"op": "simple_interest_months", "principal": principal, "rate_pct": rate, "months": months}, answer,
                    [principal * rate / 100 * months, principal * rate / 100, principal + answer])
    days = rng.randrange(15, 200)
    answer = principal * (1 + rate / 100 * days / 365)
    text = (f"An invoice for {fmt_money(principal)} is paid {days} days late and accrues simple interest at {fmt_pct(rate)} "
            f"per year (use a 365-day year). What is the total amount due, including interest?{CENTS}")
    return Case(text, {"op": "simple_amount_days", "principal": principal, "rate_pct": rate, "days": days}, answer,
                [principal * (1 + rate / 100 * days / 360), principal * rate / 100 * days / 365, principal * (1 + rate / 100)])


def compound_interest(rng: random.Random, tier: int) -> Case:
    person, rate, years = rng.choice(PEOPLE), _rate(rng, 1.5, 9.0), rng.randrange(2, 16)
    periods = 1 if tier == 1 else rng.choice([2, 4, 12])
    growth = (1 + rate / 100 / periods) ** (periods * years)
    annual = (1 + rate / 100) ** years
    simple = 1 + rate / 100 * years
    if tier < 3:
        principal = rng.randrange(10, 1000) * 100.0
        text = (f"{person} invests {fmt_money(principal)} at {fmt_pct(rate)} per year, compounded {FREQUENCIES[periods]}. "
                f"What is the investment worth after {years} years?{CENTS}")
        inputs = {"op": "compound", "principal": principal, "rate_pct": rate, "years": years, "periods_per_year": periods}
        wrong = [principal * simple, principal * (annual if periods > 1 else (1 + rate / 100 / 12) ** (12 * years)), principal * growth - principal]
        return Case(text, inputs, principal * growth, wrong)
    target = rng.randrange(50, 2000) * 100.0
    text = (f"How much must {person} deposit today to have {fmt_money(target)} in {years} years, "
            f"at {fmt_pct(rate)} per year compounded {FREQUENCIES[periods]}?{CENTS}")
    inputs = {"op": "compound_present_value", "future_value": target, "rate_pct": rate, "years": years, "periods_per_year": periods}
    return Case(text, inputs, target / growth, [target / annual, target / simple, target * (1 - rate / 100 * years)])


def _payment(principal: float, rate_pct: float, months: int) -> float:
    monthly = rate_pct / 100 / 12
    return principal * monthly / (1 - (1 + monthly) ** -months)


def loan_payment(rng: random.Random, tier: int) -> Case:
    rate = _rate(rng, 2.0, 11.0, 0.125)
    years = rng.randrange(2, 8) if tier == 1 else rng.choice([10, 15, 20, 25, 30])
    principal = rng.randrange(50, 600) * 100.0 if tier == 1 else rng.randrange(80, 900) * 1000.0
    months = 12 * years
    payment = _payment(principal, rate, months)
    naive = principal * (1 + rate / 100 * years) / months
    terms = f"at {fmt_pct(rate, 3)} annual interest, compounded monthly, repaid in equal monthly payments over {years} years"
    inputs = {"principal": principal, "rate_pct": rate, "years": years}
    if tier == 1:
        text = f"A loan of {fmt_money(principal)} is taken {terms}. What is the monthly payment?{CENTS}"
        return Case(text, {"op": "loan_payment", **inputs}, payment, [naive, principal / months, _payment(principal, rate * 12, months)])
    if tier == 2:
        text = (f"A mortgage of {fmt_money(principal)} is taken {terms}. How much interest is paid in total over the "
                f"life of the loan? Use the unrounded monthly payment.{CENTS}")
        total_interest = payment * months - principal
        return Case(text, {"op": "loan_total_interest", **inputs}, total_interest,
                    [payment * months, principal * rate / 100 * years, naive * months - principal])
    made = rng.randrange(12, months // 2)
    growth = (1 + rate / 100 / 12) ** made
    balance = principal * growth - payment * (growth - 1) / (rate / 100 / 12)
    text = (f"A mortgage of {fmt_money(principal)} is taken {terms}. What is the remaining balance right after "
            f"{made} monthly payments have been made? Use the unrounded monthly payment.{CENTS}")
    return Case(text, {"op": "loan_balance", **inputs, "payments_made": made}, balance,
                [principal - payment * made, principal * (1 - made / months), principal * growth - payment * made])


def npv(rng: random.Random, tier: int) -> Case:
    rate = _rate(rng, 3.0, 14.0, 0.5)
    if tier == 1:
        years, amount = rng.randrange(2, 11), rng.randrange(20, 2000) * 100.0
        flows = [0.0] * years + [amount]
        text = (f"What is the present value of {fmt_money(amount)} received {years} years from now, at a discount rate of "
                f"{fmt_pct(rate)} per year compounded annually?{CENTS}")
    else:
        years = 3 if tier == 2 else 5
        outlay = rng.randrange(50, 900) * 1000.0
        flows = [-outlay] + [rng.randrange(int(outlay) // 5000, int(outlay) // 1500) * 1000.0 for _ in range(years)]
        if tier == 3:
            flows[rng.randrange(2, years + 1)] *= -0.25
        text = (f"A project needs an investment of {fmt_money(outlay)} today and then has these year-end cash flows: "
                + "; ".join(f"year {t}: {fmt_money(c)}" for t, c in enumerate(flows) if t > 0)
                + f". At a discount rate of {fmt_pct(rate)} per year, what is the project's net present value?{CENTS}")
    answer = sum(c / (1 + rate / 100) ** t for t, c in enumerate(flows))
    wrong = [sum(flows), sum(c / (1 + rate / 100) ** (t + 1) for t, c in enumerate(flows)),
             sum(c / (1 + rate / 100) ** t for t, c in enumerate(flows) if t > 0)]
    return Case(text, {"op": "npv", "rate_pct": rate, "cash_flows": flows}, answer, wrong)


def currency_conversion(rng: random.Random, tier: int) -> Case:
    amount = _money(rng, 100, 90_000)
    if tier == 1:
        rate = round(rng.uniform(0.84, 0.96), 4)
        text = f"Convert {fmt_money(amount)} to euros at an exchange rate of 1 USD = {rate} EUR.{CENTS}"
        return Case(text, {"op": "convert", "amount": amount, "rate": rate}, amount * rate, [amount / rate, amount * (1 + rate), amount * rate * 1.1],
                    lambda v: fmt_money(v, "€"))
    if tier == 2:
        rate, fee = round(rng.uniform(0.73, 0.82), 4), _rate(rng, 0.5, 3.0)
        text = (f"A bank converts {fmt_money(amount)} to British pounds at 1 USD = {rate} GBP and keeps a {fmt_pct(fee)} fee, "
                f"taken from the dollar amount before conversion. How many pounds does the customer receive?{CENTS}")
        answer = amount * (1 - fee / 100) * rate
        return Case(text, {"op": "convert_fee", "amount": amount, "rate": rate, "fee_pct": fee}, answer,
                    [amount * rate, amount * (1 + fee / 100) * rate, amount * (1 - fee / 100) / rate], lambda v: fmt_money(v, "£"))
    eur_usd, usd_jpy = round(rng.uniform(1.04, 1.19), 4), round(rng.uniform(138, 158), 2)
    text = (f"An exporter receives €{fmt_number(amount)}. The bank quotes 1 EUR = {eur_usd} USD and 1 USD = {usd_jpy} JPY. "
            f"How many Japanese yen is that? Round to the nearest yen.")
    answer = amount * eur_usd * usd_jpy
    return Case(text, {"op": "convert_cross", "amount": amount, "rate_1": eur_usd, "rate_2": usd_jpy}, answer,
                [amount / eur_usd * usd_jpy, amount * usd_jpy, amount * eur_usd * usd_jpy / 100], lambda v: fmt_money(v, "¥", 0), places=0)


def tax_discount_chain(rng: random.Random, tier: int) -> Case:
    item, price = rng.choice(["jacket", "laptop", "sofa", "bicycle", "washing machine", "camera"]), _money(rng, 40, 3_000, 0.5)
    discounts = [_rate(rng, 5, 40, 5)] + ([_rate(rng, 5, 25, 5)] if tier == 3 else [])
    tax = 0.0 if tier == 1 else _rate(rng, 4, 10, 0.25)
    coupon = float(rng.randrange(1, 6) * 5) if tier == 3 else 0.0
    if tier == 1:
        text = f"A {item} priced at {fmt_money(price)} is on sale for {fmt_pct(discounts[0])} off. What is the sale price?{CENTS}"
    elif tier == 2:
        text = (f"A {item} is listed at {fmt_money(price)}. It is discounted by {fmt_pct(discounts[0])}, and then {fmt_pct(tax)} "
                f"sales tax is added to the discounted price. What does the customer pay?{CENTS}")
    else:
        text = (f"A store lists a {item} at {fmt_money(price)}. It takes {fmt_pct(discounts[0])} off, then a further "
                f"{fmt_pct(discounts[1])} off the reduced price. The customer then uses a {fmt_money(coupon)} coupon, and "
                f"{fmt_pct(tax)} sales tax is charged on the price after the coupon. What is the total paid?{CENTS}")
    answer = _price_after(price, discounts, coupon, tax)
    wrong = [_price_after(price, [sum(discounts)], coupon, tax), _price_after(price, discounts, coupon, 0.0),
             _price_after(price, discounts, 0.0, tax) - coupon, price * sum(discounts) / 100]
    return Case(text, {"op": "price_chain", "price": price, "discounts_pct": discounts, "coupon": coupon, "tax_pct": tax}, answer, wrong)


def _price_after(price: float, discounts: list[float], coupon: float, tax_pct: float) -> float:
    for discount in discounts:
        price *= 1 - discount / 100
    return (price - coupon) * (1 + tax_pct / 100)


def table_ratio(rng: random.Random, tier: int) -> Case:
    revenue = rng.randrange(5_000, 90_000)
    table = {
        "Revenue": revenue,
        "Net income": round(revenue * rng.uniform(0.02, 0.25)),
        "Current assets": round(revenue * rng.uniform(0.2, 0.6)),
        "Current liabilities": round(revenue * rng.uniform(0.1, 0.4)),
        "Short-term debt": round(revenue * rng.uniform(0.02, 0.1)),
        "Long-term debt": round(revenue * rng.uniform(0.1, 0.5)),
        "Total assets": round(revenue * rng.uniform(1.2, 2.0)),
    }
    table["Total liabilities"] = round(table["Total assets"] * rng.uniform(0.4, 0.75))
    shown = "\n".join(f"| {name} | {fmt_number(value, 0)} |" for name, value in table.items())
    intro = f"{rng.choice(COMPANIES)} reports (in $ thousands):\n| Line item | Amount |\n|---|---|\n{shown}\n"
    equity = table["Total assets"] - table["Total liabilities"]
    debt = table["Short-term debt"] + table["Long-term debt"]
    ratio = lambda v: fmt_number(v, 2)  # noqa: E731 - a formatter, named for the Case below
    if tier == 1:
        answer = table["Current assets"] / table["Current liabilities"]
        return Case(intro + "What is the current ratio? Round to two decimal places.", {"op": "current_ratio", "table": table}, answer,
                    [1 / answer, table["Total assets"] / table["Total liabilities"], (table["Current assets"] - table["Current liabilities"]) / 1000], ratio)
    if tier == 2:
        answer = table["Net income"] / table["Revenue"] * 100
        return Case(intro + f"What is the net profit margin?{PCT}", {"op": "net_margin_pct", "table": table}, answer,
                    [table["Net income"] / table["Total assets"] * 100, table["Net income"] / equity * 100, answer / 100], fmt_pct)
    answer = debt / equity
    return Case(intro + "What is the debt-to-equity ratio, counting short-term and long-term debt as debt? Round to two decimal places.",
                {"op": "debt_to_equity", "table": table}, answer,
                [table["Long-term debt"] / equity, table["Total liabilities"] / equity, debt / table["Total assets"]], ratio)


def large_numbers(rng: random.Random, tier: int) -> Case:
    company = rng.choice(COMPANIES)
    if tier == 1:
        amounts = [float(rng.randrange(1_000_000, 900_000_000)) for _ in range(2)]
        text = (f"{_possessive(company)} two divisions earned {fmt_money(amounts[0], places=0)} and {fmt_money(amounts[1], places=0)}. "
                f"What were their combined earnings in dollars?")
        answer = sum(amounts)
        return Case(text, {"op": "sum", "amounts": amounts}, answer, _digit_slips(answer), lambda v: fmt_money(v, places=0), places=0)
    if tier == 2:
        revenue = _money(rng, 50_000_000, 900_000_000)
        costs = [_money(rng, revenue * 0.3, revenue * 0.5), _money(rng, revenue * 0.1, revenue * 0.3)]
        text = (f"{company} had revenue of {fmt_money(revenue)}, cost of goods sold of {fmt_money(costs[0])} and operating "
                f"expenses of {fmt_money(costs[1])}. What was its operating profit?{CENTS}")
        answer = revenue - sum(costs)
        return Case(text, {"op": "revenue_minus_costs", "revenue": revenue, "costs": costs}, answer, [*_digit_slips(answer), revenue - costs[0]])
    shares = float(rng.randrange(10_000_000, 2_000_000_000))
    price = rng.uniform(3, 400)
    total = float(round(shares * price, -3))
    text = (f"{company} has a market capitalization of {fmt_money(total, places=0)} and {fmt_number(shares, 0)} shares "
            f"outstanding. What is the value per share?{CENTS}")
    answer = total / shares
    return Case(text, {"op": "per_share", "total": total, "shares": shares}, answer, [answer * 10, answer / 10, shares / total * 1000])


def _digit_slips(value: float) -> list[float]:
    """A dropped or doubled digit, a thousand off, a transposed pair."""
    digits = str(int(abs(value)))
    swapped = digits[:-4] + digits[-3] + digits[-4] + digits[-2:] if len(digits) > 4 else digits
    return [value / 10, value + 1000, value - 1000, float(swapped)]


CATEGORIES: dict[str, Callable[[random.Random, int], Case]] = {
    "percent_change": percent_change,
    "simple_interest": simple_interest,
    "compound_interest": compound_interest,
    "loan_payment": loan_payment,
    "npv": npv,
    "currency_conversion": currency_conversion,
    "tax_discount_chain": tax_discount_chain,
    "table_ratio": table_ratio,
    "large_numbers": large_numbers,
}


def build(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    cases = tiered_cases(rng, CATEGORIES, PER_TIER)
    return [_row(rng, f"fin-{number:04d}", category, tier, case) for number, (category, tier, case) in enumerate(cases, start=1)]


def _row(rng: random.Random, item_id: str, category: str, tier: int, case: Case) -> dict:
    answer = round_half_up(case.answer, case.places)
    answer = int(answer) if case.places == 0 else answer
    choices, label = with_choices(rng, case.fmt(answer), numeric_distractors(rng, answer, case.mistakes, case.fmt))
    return {"id": item_id, "category": category, "lang": "en", "difficulty": tier,
            "fields": {"question": case.question, "inputs": case.inputs}, "answer": answer, "choices": choices, "label": label}


if __name__ == "__main__":
    generator_main(build, SEED, Path(__file__).resolve().parent)
