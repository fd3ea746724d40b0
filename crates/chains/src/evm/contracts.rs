//! Bindings of payrail's contracts, generated from the committed artifacts in `contracts/artifacts`.

#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    ForwarderFactory,
    "../../contracts/artifacts/ForwarderFactory.json"
);
alloy::sol!(
    #[sol(rpc)]
    PayoutBatcher,
    "../../contracts/artifacts/PayoutBatcher.json"
);
alloy::sol!(
    #[sol(rpc)]
    TestToken,
    "../../contracts/artifacts/TestToken.json"
);
alloy::sol!(
    #[sol(rpc)]
    TestUSDT,
    "../../contracts/artifacts/TestUSDT.json"
);
