from mailveil.domain.addresses import Role
from mailveil.domain.threading import IdPair, translate_ids

C1 = IdPair(Role.CUSTOMER, "<c1@gmail.example>", "<r1@reply.example.com>")
S2 = IdPair(Role.SUPPLIER, "<s2@supplier.example>", "<r2@reply.example.com>")


def test_reply_to_relayed_copy_points_to_original_of_recipient() -> None:
    assert translate_ids(["<r1@reply.example.com>"], [C1], Role.CUSTOMER) == ("<c1@gmail.example>",)


def test_own_original_reference_becomes_relayed_copy_for_other_party() -> None:
    refs = ["<c1@gmail.example>", "<r2@reply.example.com>"]
    assert translate_ids(refs, [C1, S2], Role.SUPPLIER) == (
        "<r1@reply.example.com>",
        "<s2@supplier.example>",
    )


def test_unknown_ids_are_dropped_and_duplicates_removed() -> None:
    refs = ["<outside@mx.example>", "<r1@reply.example.com>", "<c1@gmail.example>"]
    assert translate_ids(refs, [C1], Role.CUSTOMER) == ("<c1@gmail.example>",)
