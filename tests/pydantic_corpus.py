"""Pydantic v2 models as people write them, and what chatq makes of each one's
``model_json_schema()``: enforced (with instances pydantic accepts, which the grammar
must admit) or refused up front naming one keyword.

Shared by tests/shared/test_pydantic_corpus.py (every model, no server) and
tests/e2e/test_structured_corpus.py (the ``e2e`` ones through the OpenAI API).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

UTC = dt.UTC


# --- the models -----------------------------------------------------------------------


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=150)  # the first example


class Temperature(BaseModel):
    celsius: int = Field(gt=-274, lt=1000)


class TimezoneOffset(BaseModel):
    minutes: int = Field(ge=-720, le=840)


class Probability(BaseModel):
    p: float = Field(ge=0, le=1)


class Price(BaseModel):
    amount: float = Field(gt=0)
    currency: Literal["EUR", "USD", "GBP"]


class Discount(BaseModel):
    rate: float = Field(ge=0, le=0.5)  # a decimal bound: refused by name


class Step(BaseModel):
    percent: int = Field(multiple_of=5, ge=0, le=100)


class Dosage(BaseModel):
    ml: float = Field(multiple_of=0.5)  # refused: multipleOf on a number


class Mood(BaseModel):
    mood: Literal["happy", "sad", "neutral"]
    intensity: int = Field(ge=1, le=10)


class Nickname(BaseModel):
    name: str = Field(max_length=20)
    nick: str | None = Field(None, max_length=12)


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=24)
    zip: str = Field(pattern=r"^\d{5}$")


class Customer(BaseModel):
    name: str = Field(max_length=24)
    address: Address


class Tags(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=3)


class Code(BaseModel):
    code: str = Field(min_length=3, max_length=8)


class Event(BaseModel):
    title: str = Field(max_length=30)
    day: dt.date


class Meeting(BaseModel):
    start: dt.datetime
    minutes: PositiveInt


class Alarm(BaseModel):
    at: dt.time


class Ticket(BaseModel):
    id: UUID
    seat: str = Field(pattern=r"^[A-Z]\d{1,2}$")


class Contact(BaseModel):
    # EmailStr needs the email-validator package; this is the schema it produces.
    email: str = Field(json_schema_extra={"format": "email"})


class Phone(BaseModel):
    number: str = Field(pattern=r"^\+?\d{1,3}[- ]\d{3}[- ]\d{4}$")


class Sku(BaseModel):
    sku: str = Field(pattern=r"[A-Z]{3}-\d+")  # unanchored: found anywhere


class Color(enum.StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Paint(BaseModel):
    color: Color
    litres: float = Field(gt=0, le=20)


class Level(enum.IntEnum):
    low = 1
    mid = 2
    high = 3


class Alert(BaseModel):
    level: Level
    message: str = Field(max_length=40)


class Mixed(BaseModel):
    value: Literal[1, "one", True, None]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Owner(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")


class Either(BaseModel):
    value: int | str


class Point(BaseModel):
    xy: tuple[int, int]


class Scores(BaseModel):
    scores: dict[str, int]


class Inventory(BaseModel):
    stock: dict[str, Annotated[int, Field(ge=0)]]


class LineItem(BaseModel):
    sku: str = Field(max_length=12)
    qty: PositiveInt
    price: NonNegativeFloat


class Order(BaseModel):
    items: list[LineItem] = Field(min_length=1, max_length=3)


class Node(BaseModel):
    value: int
    children: list[Node] = []


class Chain(BaseModel):
    next: Chain


class Money(BaseModel):
    amount: Decimal


class Blob(BaseModel):
    data: Any


class Flag(BaseModel):
    on: bool


class UniqueTags(BaseModel):
    tags: set[str]


class Timer(BaseModel):
    duration: dt.timedelta


class Link(BaseModel):
    url: AnyUrl


class Rating(BaseModel):
    stars: int | None = Field(None, ge=1, le=5)


class Profile(BaseModel):
    user: str = Field(max_length=16)
    address: Address | None = None


class Dice(BaseModel):
    face: Literal[1, 2, 3, 4, 5, 6]


class RawBytes(BaseModel):
    payload: bytes


class Lotto(BaseModel):
    numbers: list[Annotated[int, Field(ge=1, le=49)]] = Field(min_length=6, max_length=6)


class Username(BaseModel):
    name: str = Field(pattern=r"^[a-z]+$", max_length=10)  # both: refused (maxLength)


class Coordinates(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="The record's id")
    note: str = Field("", max_length=20, description="Free text", examples=["hi"])


class Aliased(BaseModel):
    full_name: str = Field(alias="fullName", max_length=30)


class Weekdays(BaseModel):
    days: list[Literal["mon", "tue", "wed", "thu", "fri"]] = Field(max_length=5)


class Hex(BaseModel):
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


class Comment(BaseModel):
    text: str = Field(pattern=r"^[^<>]{1,80}$")


class Year(BaseModel):
    year: int = Field(ge=1900, le=2100)


class Balance(BaseModel):
    cents: int = Field(le=0)


class Matrix(BaseModel):
    rows: list[list[int]] = Field(max_length=3)


# --- what chatq makes of each ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    model: type[BaseModel]
    instances: list[BaseModel] = field(default_factory=list)  # enforced: these pass
    refused: str | None = None  # refused: the keyword named
    e2e: bool = False  # run through the API in tests/e2e/test_structured_corpus.py

    @property
    def name(self) -> str:
        return self.model.__name__


def _addr() -> Address:
    return Address(street="1 Main St", city="Springfield", zip="12345")


CORPUS: list[Case] = [
    Case(Person, [Person(name="Ada", age=36), Person(name="Old", age=150)], e2e=True),
    Case(Temperature, [Temperature(celsius=-273), Temperature(celsius=999)], e2e=True),
    Case(TimezoneOffset, [TimezoneOffset(minutes=-720), TimezoneOffset(minutes=330)]),
    Case(Probability, [Probability(p=0), Probability(p=0.75), Probability(p=1.0)], e2e=True),
    Case(Price, [Price(amount=12.5, currency="EUR"), Price(amount=0.01, currency="USD")]),
    Case(Discount, refused="maximum"),
    Case(Step, [Step(percent=0), Step(percent=85)]),
    Case(Dosage, refused="multipleOf"),
    Case(Mood, [Mood(mood="happy", intensity=10)]),
    Case(Nickname, [Nickname(name="Ada"), Nickname(name="Ada", nick="A")]),
    Case(Address, [_addr()]),
    Case(Customer, [Customer(name="Bob", address=_addr())], e2e=True),
    Case(Tags, [Tags(tags=["a"]), Tags(tags=["a", "b", "c"])]),
    Case(Code, [Code(code="abc"), Code(code="abcdefgh")]),
    Case(Event, [Event(title="Launch", day=dt.date(2024, 2, 29))], e2e=True),
    Case(Meeting, [Meeting(start=dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC), minutes=45),
                   Meeting(start=dt.datetime(2024, 5, 1, 9, 30, 5, 123456,
                                             tzinfo=dt.timezone(dt.timedelta(hours=-5))),
                           minutes=1)]),
    Case(Alarm, [Alarm(at=dt.time(7, 30, tzinfo=UTC)), Alarm(at=dt.time(7, 30, 0, 5, UTC))]),
    Case(Ticket, [Ticket(id=UUID("123e4567-e89b-12d3-a456-426614174000"), seat="A12")],
         e2e=True),
    Case(Contact, [Contact(email="ada@example.com")], e2e=True),
    Case(Phone, [Phone(number="+1 555-1234"), Phone(number="44 555 1234")]),
    Case(Sku, [Sku(sku="ABC-123"), Sku(sku="item ABC-1 (new)")]),
    Case(Paint, [Paint(color=Color.blue, litres=2.5), Paint(color=Color.red, litres=20)]),
    Case(Alert, [Alert(level=Level.high, message="disk full")]),
    Case(Mixed, [Mixed(value=1), Mixed(value="one"), Mixed(value=True), Mixed(value=None)]),
    Case(Owner, [Owner(pet=Cat(kind="cat", lives=9)), Owner(pet=Dog(kind="dog", good=True))],
         e2e=True),
    Case(Either, [Either(value=3), Either(value="three")]),
    Case(Point, [Point(xy=(1, -2))], e2e=True),
    Case(Scores, [Scores(scores={}), Scores(scores={"ada": 3, "bob": -1})]),
    Case(Inventory, [Inventory(stock={"apples": 0, "pears": 12})]),
    Case(Order, [Order(items=[LineItem(sku="A1", qty=2, price=0.5)])], e2e=True),
    Case(Node, [Node(value=1, children=[Node(value=2, children=[Node(value=3)])])],
         e2e=True),  # recursive: three levels
    Case(Chain, refused="$ref"),  # recursive, each level requires the next
    Case(Money, [Money(amount=Decimal("12.50")), Money(amount=Decimal(3))]),
    Case(Blob, [Blob(data={"k": [1, "x", None]}), Blob(data=3)]),
    Case(Flag, [Flag(on=False)]),
    Case(UniqueTags, refused="uniqueItems"),
    Case(Timer, refused="format"),  # duration
    Case(Link, refused="format"),  # uri
    Case(Rating, [Rating(), Rating(stars=5)]),
    Case(Profile, [Profile(user="ada"), Profile(user="ada", address=_addr())]),
    Case(Dice, [Dice(face=6)]),
    Case(RawBytes, refused="format"),  # binary
    Case(Lotto, [Lotto(numbers=[1, 7, 19, 23, 42, 49])]),
    Case(Username, refused="maxLength"),  # a pattern and a length at once
    Case(Coordinates, [Coordinates(lat=-33.86, lon=151.2), Coordinates(lat=90, lon=-180)],
         e2e=True),
    Case(Strict, [Strict(id=1), Strict(id=2, note="x")]),
    Case(Aliased, [Aliased(fullName="Ada Lovelace")]),
    Case(Weekdays, [Weekdays(days=[]), Weekdays(days=["mon", "fri"])]),
    Case(Hex, [Hex(color="#00ffAA")]),
    Case(Comment, [Comment(text="Looks good, ship it!")]),
    Case(Year, [Year(year=1900), Year(year=2024), Year(year=2100)]),
    Case(Balance, [Balance(cents=0), Balance(cents=-1250)]),
    Case(Matrix, [Matrix(rows=[[1, 2], [3]])]),
]
