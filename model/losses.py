"""SoVITS training losses: least-squares GAN, feature matching and the prior/posterior KL."""
from __future__ import annotations

import torch


def feature_loss(fmap_r, fmap_g) -> torch.Tensor:
    loss = 0.0
    for dr, dg in zip(fmap_r, fmap_g):
        for r, g in zip(dr, dg):
            loss = loss + torch.mean(torch.abs(r.float().detach() - g.float()))
    return loss * 2


def discriminator_loss(real_scores, fake_scores) -> torch.Tensor:
    loss = 0.0
    for r, g in zip(real_scores, fake_scores):
        loss = loss + torch.mean((1 - r.float()) ** 2) + torch.mean(g.float() ** 2)
    return loss


def generator_loss(fake_scores) -> torch.Tensor:
    return sum(torch.mean((1 - g.float()) ** 2) for g in fake_scores)


def kl_loss(z_p, logs_q, m_p, logs_p, mask) -> torch.Tensor:
    """KL between the posterior sample mapped by the flow (z_p, logs_q) and the text prior (m_p, logs_p)."""
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask)
