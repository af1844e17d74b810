//! Fixed signing keys of the fuzz targets (test keys made for this crate, used nowhere
//! else): the JWT target signs with them and installs their public halves as the issuer's
//! JWKS, so that every run and every crash reproduction sees the same keys.

/// RSA 2048 private key, DER (PKCS#1 RSAPrivateKey), base64 (standard, in pieces).
pub const RSA_DER: &[&str] = &[
    "MIIEowIBAAKCAQEArVo19VXPwjP5QQ+DEWIMRKMnEuFQ1s9ZdUpfoj9g/TrAfGygyLHW0SE3xeBK",
    "rIEhyfTwAB2puY1qCtkTKHWRaZR3f6Snd6tYiK5fqQOrERsjeFJWNmETmz42B1DhD00kQdoHMY0X",
    "se3R2pq19dHO0omomnz7PIjEcL8Y1dmob8SSx64zRgv82rrWXUpHQtH2zv/cyyYU6o/ogFISFZao",
    "mgw5NiZFs4cCi6socEitFDOx5UrZri0GG3RLLlgtejFAZ6i1qy5oK0S010aB1GjZHZof/j/RmemC",
    "j9v6JLS6fSFtKoMj3/Qu0ANy2lQzIDQJA5Eg5EPfjh/aKQd4mApdZwIDAQABAoIBAA07OhK18DvV",
    "EB/sjJPlrvGiN/F5+MI2McOarKTLctGBPxkZu9/1qv04ktnSN82ygYWGFR3jjB8Miym1NEzw3et4",
    "GIx8+qDosPY/XclrU6hKypdJeY+AmcJOQ+Nx3R74EJD+9wn++4fQkvIjjHxTY+NJliPmIp4vnKBn",
    "OM10/1htQWiVh+sAIv5CblnQalAqwHnoeXxepqVrXdbAQv2SJRe5XylB7swdV2cQ8OyzcQiXPlqD",
    "5JcXdlvH9A5Cy/KSMKy5rSVbkWypX7kHNuYGVZFlR0zeCL1JEYC89DR5AaOBC2eyRFZHZDhtARkt",
    "e99eMPx43uK8p9QAMHqm8IHfdukCgYEA2gI1/vGfraxcFvp2hGr+wjvNbOTP911tFmXWK2AYra8b",
    "65NMEun+vSKUoVPr5V55Xx+BNnBl956mRm6L4sCpAwKdC1HsuFmm0sP1Ts5xZguYSY4T3QIbzMNh",
    "KaUZOx0l4dIOoC2xyQBrFrPk6Yh1v/hiaisjJV4nFmcjxlSMXyMCgYEAy4/MNk8JUneIPeT7xn9/",
    "5X4Sz0rU7BRd4wRHLmBQzCNSnv8heb9cgiXFoxpL7PSHZPP1JLNe2LAB2WayAbdyhIvE2kT+pSwh",
    "Glw/kTqTS6gzUkUdRGSdjYBTImQs+q0iLX/RMfVbUOi+FObaTAlQJ1r8WNfBZUqSqVkBXwHqLu0C",
    "gYEAiLL2NKRBod7/55CpnCKTGCvzhaJ8HPnCG1dD0fLxxoaUlUTJYNrE1sfGNtqugiaZKGJS3VXh",
    "OkGKtYM/x7FSyQZsftqh+n6MsoAZY47jYD9JAGZMYjqeP+kLFdfmWEDQribO8PV2Ezll7NhkY2Mj",
    "onoXC8d8xEOjctK9hfEiC80CgYBlh+OjcuiDaXta48twxkdUf/2BxyFMXxw1Dv0x9HhYWYXsJ/Ta",
    "dMf/YjehkowsNAsUH1o2ZAD6s0840DAZCxbjZZNaCu+4ErqwGzLZjQ3Kvqpabn6ajlTHLypIDQ8i",
    "ORjC+O2urWJOiMfGRR68rih8eLVE2thrXTapoOs+KAZWQQKBgCfmnPxBKnqtnKxXOR+kUqqSZ+NG",
    "fvofJembnLNqbdrfQkwzQLZ+AlUKmD1whbMviMX8DPS1fopAaQKpo9dxG0ck/XL/J+zlftje5OTY",
    "xaK0aX8QFhYWTE3ImFPvYGB3DAvyuVE+SDyyTgRhk+ZuF/aGeJPBZLIgGKnyZtSS7PQZ",
];

/// EC P-256 private key, DER (SEC 1 ECPrivateKey), base64.
pub const P256_DER: &[&str] = &[
    "MHcCAQEEIPAWcO8vgZqVM3ytBMcch/VE+1W2v6O6M4X7pB58QZTNoAoGCCqGSM49AwEHoUQDQgAE",
    "hjPKQNRoECVzziIAMptszTY3ecbx/gyjLnnB0nEmJBArPqtJ1npHDzrlUMKoLj1y+8EQC/47BlPL",
    "NLw7/HpNCQ==",
];

/// Ed25519 seed.
pub const ED25519_SEED: [u8; 32] = [
    235, 226, 190, 65, 26, 218, 14, 201, 35, 251, 161, 78, 23, 81, 206, 62, 93, 17, 110, 194, 6,
    233, 21, 174, 29, 174, 134, 247, 79, 160, 181, 17,
];

/// The HS256 shared secret configured for the issuer.
pub const HS_SECRET: &[u8] = b"portcullis-fuzz-hs256-shared-secret-0123456789";
