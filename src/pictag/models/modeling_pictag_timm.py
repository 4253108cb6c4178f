"""A pictag classifier on a timm backbone, for transformers: `pictag export --format hf` copies this file into the
folder it writes, and `AutoModelForImageClassification.from_pretrained(DIR, trust_remote_code=True)` loads it.

It is transformers' `TimmWrapperForImageClassification` with one difference: pictag trains its heads on the
L2-normalised pooled features, and no timm classifier normalises, so the classifier here takes the normalised
features. Without it the logits would differ (the bias no longer matches the scale of the features). This file
imports transformers and timm only, never pictag.
"""

import torch.nn.functional as F
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput


class PictagTimmConfig(TimmWrapperConfig):
    # Its own model type, so that transformers without trust_remote_code refuses the folder instead of running
    # the plain wrapper, which would score unnormalised features.
    model_type = "pictag_timm"


class PictagTimmForImageClassification(TimmWrapperForImageClassification):
    config_class = PictagTimmConfig

    def forward(self, pixel_values, labels=None, **kwargs):
        pixel_values = pixel_values.to(self.device, self.dtype)
        pooled = self.timm_model.forward_head(self.timm_model.forward_features(pixel_values), pre_logits=True)
        logits = self.timm_model.get_classifier()(F.normalize(pooled, dim=-1))
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits)
