"""Bitcoin transaction processing: build and sign real transactions, verify them in tasks.

Built with python-bitcoinlib: legacy pay-to-pubkey-hash and pay-to-script-hash 2-of-3
multisig spends, signed with ``SIGHASH_ALL``. Verification is what a node does to a
transaction before it takes it into its mempool, less the UTXO lookup (each
transaction carries the outputs it spends): structure (``CheckTransaction``), no
value created from nothing, and every input's script run by the script interpreter,
signatures included. Nothing here talks to a network; the previous outputs are made up.

Signing ~1 ms and verifying ~1 ms per input (pure-Python interpreter, OpenSSL's
ECDSA): the "many short CPU tasks" of transaction work.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any

import bitcoin  # type: ignore[import-untyped]
from bitcoin.core import (  # type: ignore[import-untyped]
    CheckTransaction,
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    Hash160,
    ValidationError,
)
from bitcoin.core.script import (  # type: ignore[import-untyped]
    OP_0,
    OP_2,
    OP_3,
    OP_CHECKMULTISIG,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    CScript,
    SignatureHash,
)
from bitcoin.core.scripteval import (  # type: ignore[import-untyped]
    SCRIPT_VERIFY_DERSIG,
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_STRICTENC,
    VerifyScript,
    VerifyScriptError,
)
from bitcoin.core.serialize import SerializationError  # type: ignore[import-untyped]
from bitcoin.wallet import CBitcoinSecret  # type: ignore[import-untyped]

bitcoin.SelectParams("regtest")  # made-up coins: never valid on the real chain

FLAGS = (SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_STRICTENC, SCRIPT_VERIFY_DERSIG)
FEE = 1_000  # satoshis
TAMPERINGS = ("amount", "signature", "spent")


@dataclass(frozen=True)
class Spent:
    """The previous output an input spends (what a UTXO lookup would return)."""

    script_pubkey: bytes
    amount: int  # satoshis


@dataclass(frozen=True)
class SignedTx:
    """A serialised transaction and the outputs it spends, one per input."""

    raw: bytes
    spent: tuple[Spent, ...]
    tampered: str | None = None  # how it was tampered with, for the demo's tally


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """A batch's tally: valid, invalid, and tampered ones that got through (must be 0)."""

    valid: int
    invalid: int
    missed: int


class Wallet:
    """Keys derived from a seed: single keys for P2PKH, key triples for 2-of-3 multisig."""

    def __init__(self, seed: int = 1, size: int = 6) -> None:
        self.keys = [_key(seed, i) for i in range(size)]

    def key(self, index: int) -> Any:
        return self.keys[index % len(self.keys)]

    def triple(self, index: int) -> list[Any]:
        return [self.key(index + k) for k in range(3)]


def _key(seed: int, index: int) -> Any:
    secret = hashlib.sha256(f"anya-demo-key:{seed}:{index}".encode()).digest()
    return CBitcoinSecret.from_secret_bytes(secret)


def _p2pkh(key: Any) -> Any:
    return CScript([OP_DUP, OP_HASH160, Hash160(key.pub), OP_EQUALVERIFY, OP_CHECKSIG])


def _multisig_redeem(keys: list[Any]) -> Any:
    return CScript([OP_2, *(k.pub for k in keys), OP_3, OP_CHECKMULTISIG])


def _sign(key: Any, script: Any, tx: Any, index: int) -> bytes:
    digest = SignatureHash(script, tx, index, SIGHASH_ALL)
    signature: bytes = key.sign(digest) + bytes([SIGHASH_ALL])
    return signature


def build_signed(wallet: Wallet, index: int, rng: random.Random) -> SignedTx:
    """One or two inputs (P2PKH or P2SH multisig), a payment and change, all signed."""
    inputs = rng.randint(1, 2)
    multisig = [rng.random() < 0.3 for _ in range(inputs)]
    amounts = [rng.randint(50_000, 5_000_000) for _ in range(inputs)]
    scripts: list[Any] = []  # what each input's signature commits to
    spent: list[Spent] = []
    for i, is_multi in enumerate(multisig):
        if is_multi:
            redeem = _multisig_redeem(wallet.triple(index + i))
            scripts.append(redeem)
            spent.append(Spent(bytes(redeem.to_p2sh_scriptPubKey()), amounts[i]))
        else:
            script = _p2pkh(wallet.key(index + i))
            scripts.append(script)
            spent.append(Spent(bytes(script), amounts[i]))
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(_fake_txid(index, i), i)) for i in range(inputs)],
        _outputs(wallet, index, sum(amounts) - FEE, rng),
    )
    for i, is_multi in enumerate(multisig):
        if is_multi:
            keys = wallet.triple(index + i)
            signatures = [_sign(k, scripts[i], tx, i) for k in keys[:2]]
            tx.vin[i].scriptSig = CScript([OP_0, *signatures, scripts[i]])
        else:
            key = wallet.key(index + i)
            tx.vin[i].scriptSig = CScript([_sign(key, scripts[i], tx, i), key.pub])
    return SignedTx(raw=tx.serialize(), spent=tuple(spent))


def _fake_txid(index: int, vout: int) -> bytes:
    return hashlib.sha256(f"anya-demo-prevout:{index}:{vout}".encode()).digest()


def _outputs(wallet: Wallet, index: int, total: int, rng: random.Random) -> list[Any]:
    payment = rng.randint(total // 4, total * 3 // 4)
    return [
        CMutableTxOut(payment, _p2pkh(wallet.key(index + 3))),
        CMutableTxOut(total - payment, _p2pkh(wallet.key(index))),
    ]


def tamper(tx: SignedTx, how: str) -> SignedTx:
    """A copy changed after signing: every one of these must fail verification."""
    mutable = CMutableTransaction.from_tx(CTransaction.deserialize(tx.raw))
    spent = tx.spent
    if how == "amount":  # pay a little more to the first output: the signatures no longer match
        mutable.vout[0].nValue += 1
    elif how == "signature":  # one bit of the first input's script flipped
        script = bytearray(mutable.vin[0].scriptSig)
        script[10] ^= 0x01
        mutable.vin[0].scriptSig = CScript(bytes(script))
    elif how == "spent":  # claim an input spends a different (someone else's) output
        other = Spent(bytes(_p2pkh(_key(99, 0))), spent[0].amount)
        spent = (other, *spent[1:])
    else:
        raise ValueError(f"tamper: got {how!r}, expected one of {', '.join(TAMPERINGS)}")
    return replace(tx, raw=mutable.serialize(), spent=spent, tampered=how)


def verify(tx: SignedTx) -> Verdict:
    """Structure, value, then every input's scripts and signatures."""
    try:
        parsed = CTransaction.deserialize(tx.raw)
        CheckTransaction(parsed)
    except (SerializationError, ValidationError, ValueError) as exc:
        return Verdict(False, f"malformed: {exc}")
    if len(tx.spent) != len(parsed.vin):
        return Verdict(False, "inputs and spent outputs differ in number")
    if sum(out.nValue for out in parsed.vout) > sum(s.amount for s in tx.spent):
        return Verdict(False, "spends more than its inputs hold")
    for index, (txin, spent) in enumerate(zip(parsed.vin, tx.spent, strict=True)):
        try:
            VerifyScript(txin.scriptSig, CScript(spent.script_pubkey), parsed, index, FLAGS)
        except (VerifyScriptError, ValidationError, ValueError) as exc:
            return Verdict(False, f"input {index}: {exc}")
    return Verdict(True)


def verify_batch(txs: list[SignedTx]) -> VerifyResult:
    valid = invalid = missed = 0
    for tx in txs:
        if verify(tx).ok:
            valid += 1
            missed += tx.tampered is not None
        else:
            invalid += 1
    return VerifyResult(valid=valid, invalid=invalid, missed=missed)


def make_transactions(count: int, tamper_every: int = 25, seed: int = 1) -> list[SignedTx]:
    """``count`` signed transactions; every ``tamper_every``-th is tampered with (0: none)."""
    rng = random.Random(seed)
    wallet = Wallet(seed)
    made = []
    for index in range(count):
        tx = build_signed(wallet, index, rng)
        if tamper_every and index % tamper_every == tamper_every - 1:
            tx = tamper(tx, TAMPERINGS[(index // tamper_every) % len(TAMPERINGS)])
        made.append(tx)
    return made
