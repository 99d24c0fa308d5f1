# pragma version ~=0.4.3
"""
@title Sandbox USD Coin
@notice An ERC-20 token of 6 decimals with EIP-3009 transfers with authorization: the holder
        signs an EIP-712 message off chain and anyone (a rail, an x402 facilitator) submits it.
        Each authorization nonce is used once. The deployer is the only minter (the issuer).
@dev Compiled offline by `python -m wallets.evm.compile` into token.json next to this file.
"""

from ethereum.ercs import IERC20

implements: IERC20

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event AuthorizationUsed:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

name: public(String[32])
symbol: public(String[16])
decimals: public(constant(uint8)) = 6
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
minter: public(address)
authorizationState: public(HashMap[address, HashMap[bytes32, bool]])
DOMAIN_SEPARATOR: public(immutable(bytes32))

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
TRANSFER_WITH_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
# secp256k1n / 2: a signature with a higher s is the malleable twin of a valid one
MAX_S: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168


@deploy
def __init__(name_: String[32], symbol_: String[16], version_: String[8]):
    self.name = name_
    self.symbol = symbol_
    self.minter = msg.sender
    DOMAIN_SEPARATOR = keccak256(abi_encode(
        EIP712_DOMAIN_TYPEHASH, keccak256(name_), keccak256(version_), chain.id, self))


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "transfer to the zero address"
    assert self.balanceOf[sender] >= amount, "transfer amount exceeds balance"
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    assert self.allowance[sender][msg.sender] >= amount, "transfer amount exceeds allowance"
    self.allowance[sender][msg.sender] -= amount
    self._transfer(sender, receiver, amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    assert msg.sender == self.minter, "only the minter mints"
    assert receiver != empty(address), "mint to the zero address"
    self.totalSupply += amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=empty(address), receiver=receiver, value=amount)


@external
def transferWithAuthorization(
    sender: address,
    receiver: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    """
    @notice EIP-3009: move `amount` from `sender` to `receiver` with `sender`'s signature of
            TransferWithAuthorization(from, to, value, validAfter, validBefore, nonce).
    """
    assert block.timestamp > valid_after, "authorization is not yet valid"
    assert block.timestamp < valid_before, "authorization is expired"
    assert not self.authorizationState[sender][nonce], "authorization is used"
    assert convert(s, uint256) <= MAX_S, "invalid signature"
    digest: bytes32 = keccak256(concat(b"\x19\x01", DOMAIN_SEPARATOR, keccak256(abi_encode(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH, sender, receiver, amount, valid_after,
        valid_before, nonce))))
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address) and signer == sender, "invalid signature"
    self.authorizationState[sender][nonce] = True
    log AuthorizationUsed(authorizer=sender, nonce=nonce)
    self._transfer(sender, receiver, amount)
